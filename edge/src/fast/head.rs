//! HTTP/1.1 message heads for the fast path: parsed once with httparse, judged by the one
//! request policy ([`crate::policy`]), and the heads the edge writes on (the upstream's request
//! head, the client's answer head) built into reused buffers in the same pass.

use crate::compress;
use crate::policy::{self, Forward, RequestBody, ResponseBody, Version};
use std::io::Write as _;
use std::net::IpAddr;
use std::ops::Range;

/// More headers than this and the request goes to Pingora (which has its own limits).
pub const MAX_HEADERS: usize = 64;
/// Responses may carry more (cookies, CSP, …); more than this is a 502.
const MAX_RESPONSE_HEADERS: usize = 160;

/// Why a complete, readable request is left to Pingora's full path. Each is rare in steady
/// traffic, or needs what only that path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// The policy refuses it (ambiguous framing, no Host, a bad target): the full path gives the
    /// same answer from the same policy, and closes.
    Refused,
    /// HTTP/1.0, CONNECT, a chunked upload, `Expect`, an upgrade, or more than
    /// [`MAX_HEADERS`] headers.
    Shape,
}

/// What reading the start of a connection's buffer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// Not an HTTP/1.x request head at all.
    Unparsable,
    Head(RequestHead),
}

/// What the fast path needs from a request head. Ranges index the buffer the head was read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub len: usize,
    pub method: Range<usize>,
    /// The target as sent (logged).
    pub path: Range<usize>,
    /// What the request is for: the absolute-form target's authority, else Host.
    pub authority: Range<usize>,
    /// `Some`: the full path must take it.
    pub unfit: Option<Unfit>,
    /// An ACME token request (by the target's path, whatever its form).
    pub acme: bool,
    pub accept: Option<Range<usize>>,
    pub accept_encoding: Option<Range<usize>>,
    pub request_id: Option<Range<usize>>,
    pub content_length: u64,
    /// The client asked to close after this request (`Connection: close`).
    pub close: bool,
    /// Idempotent and bodiless: safe to send again.
    pub replayable: bool,
}

/// Reads one request head at the start of `buf`.
///
/// For a head the fast path can take, it writes the start of the upstream's request head into
/// `out` in the same pass (replacing what was there): the request line in origin form and the
/// client's headers the policy forwards. [`finish_upstream_request`] adds the edge's own.
pub fn parse_request(buf: &[u8], out: &mut Vec<u8>) -> Parsed {
    out.clear();
    out.reserve(1024); // one allocation for most heads (an idle connection gave its buffer back)
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return too_many_headers(buf),
        Err(_) => return Parsed::Unparsable,
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Unparsable;
    };
    let version = match req.version {
        Some(1) => Version::Http11,
        _ => Version::Http10,
    };
    let (method_range, path_range) = (
        range_of(buf, method.as_bytes()),
        range_of(buf, target.as_bytes()),
    );
    let facts = match policy::read_request(
        method.as_bytes(),
        target.as_bytes(),
        version,
        req.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
    ) {
        Ok(f) => f,
        Err(_) => {
            return Parsed::Head(RequestHead::unfit(
                len,
                method_range,
                path_range,
                Unfit::Refused,
            ));
        }
    };
    let content_length = match facts.body {
        RequestBody::None => 0,
        RequestBody::Length(n) => n,
        RequestBody::Chunked => u64::MAX,
    };
    let mut head = RequestHead {
        len,
        method: method_range,
        path: path_range,
        authority: range_of(buf, facts.authority),
        unfit: None,
        acme: facts.is_acme_challenge(),
        accept: facts.accept.map(|v| range_of(buf, v)),
        accept_encoding: facts.accept_encoding.map(|v| range_of(buf, v)),
        request_id: facts.request_id.map(|v| range_of(buf, v)),
        content_length,
        close: facts.close,
        replayable: facts.replayable(method.as_bytes()),
    };
    if version != Version::Http11
        || method == "CONNECT"
        || facts.body == RequestBody::Chunked
        || facts.expect
        || facts.upgrade
    {
        head.unfit = Some(Unfit::Shape);
        return Parsed::Head(head);
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&facts.path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match policy::request_header(name, &facts.connection) {
            Forward::Keep => push_header(out, name, h.value),
            Forward::Drop => {}
            // Host as the policy reads it (the absolute-form target's authority wins); the
            // length as sent (checked plain); `Connection` is ours to manage.
            Forward::Framing if name.eq_ignore_ascii_case(b"host") => {
                push_header(out, name, facts.authority)
            }
            Forward::Framing if name.eq_ignore_ascii_case(b"content-length") => {
                push_header(out, name, h.value)
            }
            Forward::Framing => {}
        }
    }
    Parsed::Head(head)
}

/// A head with more headers than the fast path reads: still a request, for the full path.
fn too_many_headers(buf: &[u8]) -> Parsed {
    let Some(len) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        return Parsed::Partial;
    };
    let line_end = buf.iter().position(|&b| b == b' ').unwrap_or(0);
    Parsed::Head(RequestHead::unfit(len, 0..line_end, 0..0, Unfit::Shape))
}

impl RequestHead {
    fn unfit(len: usize, method: Range<usize>, path: Range<usize>, why: Unfit) -> Self {
        RequestHead {
            len,
            method,
            path,
            authority: 0..0,
            unfit: Some(why),
            acme: false,
            accept: None,
            accept_encoding: None,
            request_id: None,
            content_length: 0,
            close: true,
            replayable: false,
        }
    }
}

/// Ends the upstream request head [`parse_request`] began with the edge's forwarding headers
/// ([`policy::FORWARDING`]): X-Forwarded-For/Proto/Host (`host`: the authority the request is
/// for) and X-Request-Id.
pub fn finish_upstream_request(
    out: &mut Vec<u8>,
    client_ip: Option<IpAddr>,
    proto: &str,
    host: &[u8],
    request_id: &[u8],
) {
    if let Some(ip) = client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        let _ = write!(out, "{ip}");
        out.extend_from_slice(b"\r\n");
    }
    push_header(out, b"x-forwarded-proto", proto.as_bytes());
    if !host.is_empty() {
        push_header(out, b"x-forwarded-host", host);
    }
    push_header(out, b"x-request-id", request_id);
    out.extend_from_slice(b"\r\n");
}

/// A response head or chunked body the edge cannot pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// What the fast path learned from a response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    /// 1xx: passed on already; the final answer follows.
    pub interim: bool,
    pub body: ResponseBody,
    /// The upstream connection can carry another request once this answer is read whole.
    pub upstream_keepalive: bool,
    pub event_stream: bool,
    /// The edge compresses the body with this (it goes out chunked).
    pub encode: Option<compress::Encoding>,
}

/// Per-app response rules the rewrite applies.
#[derive(Debug, Clone, Copy)]
pub struct ResponseRules<'a> {
    pub request_id: &'a [u8],
    pub head_request: bool,
    pub policy: &'a spinforge_state::policy::EdgePolicy,
    /// Add the app's HSTS header (HTTPS, a name with a trusted certificate).
    pub hsts: bool,
    /// The encoding the client accepts and the app's policy allows (`None`: send as is).
    pub accepted: Option<compress::Encoding>,
    /// Ask the client to close (`Connection: close`).
    pub close: bool,
}

/// Where [`rewrite_response`] writes the head for the client: HTTP/1.1 bytes (`Vec<u8>`) or
/// HTTP/2 fields ([`H2Head`]). The rules are the same; only the framing differs.
pub trait HeadOut {
    /// Whether the client's protocol frames bodies itself (HTTP/2): then no framing or
    /// connection header is written, and a compressed body needs no chunking.
    const FRAMES_ITSELF: bool;
    fn status(&mut self, status: u16, reason: &[u8]);
    fn header(&mut self, name: &[u8], value: &[u8]);
    /// Ends the head. `close`: the client's connection closes after this answer; `chunked`:
    /// the edge sends the body chunked (it compresses it).
    fn end(&mut self, close: bool, chunked: bool);
    /// An interim (1xx) answer, passed on as the upstream sent it.
    fn interim(&mut self, raw: &[u8]);
}

impl HeadOut for Vec<u8> {
    const FRAMES_ITSELF: bool = false;

    fn status(&mut self, status: u16, reason: &[u8]) {
        let _ = write!(self, "HTTP/1.1 {status} ");
        self.extend_from_slice(reason);
        self.extend_from_slice(b"\r\n");
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        push_header(self, name, value);
    }

    fn end(&mut self, close: bool, chunked: bool) {
        if close {
            self.extend_from_slice(b"connection: close\r\n");
        }
        if chunked {
            // Last, so that [`frame_by_length`] can replace it once a whole body is compressed.
            self.extend_from_slice(CHUNKED_END);
        } else {
            self.extend_from_slice(b"\r\n");
        }
    }

    fn interim(&mut self, raw: &[u8]) {
        self.extend_from_slice(raw);
    }
}

/// An answer head for an HTTP/2 stream.
#[derive(Debug, Default)]
pub struct H2Head {
    pub status: u16,
    pub headers: http::HeaderMap,
}

impl HeadOut for H2Head {
    const FRAMES_ITSELF: bool = true;

    fn status(&mut self, status: u16, _reason: &[u8]) {
        self.status = status;
        self.headers.clear();
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        // A field HTTP/2 cannot carry (a name with upper case or odd bytes; the policy has
        // already dropped the connection-specific ones) is left out.
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            self.headers.append(n, v);
        }
    }

    fn end(&mut self, _close: bool, _chunked: bool) {}

    fn interim(&mut self, _raw: &[u8]) {
        // Interim answers are not passed on over HTTP/2 (as Pingora's full path does not).
    }
}

/// Parses the response head at the start of `buf` and writes the head for the client into `out`.
/// `Ok(None)`: incomplete. `Err(Malformed)`: not an answer the edge can pass on.
pub fn rewrite_response<O: HeadOut>(
    buf: &[u8],
    out: &mut O,
    rules: &ResponseRules<'_>,
) -> Result<Option<ResponseHead>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed),
    };
    let status = resp.code.ok_or(Malformed)?;
    let version = match resp.version {
        Some(1) => Version::Http11,
        _ => Version::Http10,
    };
    let facts = policy::read_response(
        status,
        version,
        rules.head_request,
        false,
        resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
    )
    .map_err(|policy::BadResponse(why)| {
        tracing::debug!(why, "refusing an upstream answer");
        Malformed
    })?;
    if facts.interim {
        // An interim answer (103 Early Hints, …): passed on as it is; the caller reads on.
        out.interim(&buf[..len]);
        return Ok(Some(ResponseHead {
            len,
            status,
            interim: true,
            body: ResponseBody::None,
            upstream_keepalive: true,
            event_stream: false,
            encode: None,
        }));
    }
    // First pass: what the rewrite depends on (compression, Vary, Date, security headers).
    let mut answer = compress::AnswerFacts {
        status,
        length: match facts.body {
            ResponseBody::Length(n) => Some(n),
            _ => None,
        },
        head_request: rules.head_request,
        ..compress::AnswerFacts::default()
    };
    let mut event_stream = false;
    let mut varies = false;
    let mut dated = false;
    let security = policy::security_headers(rules.policy, rules.hsts);
    let mut present = [false; 4];
    for h in resp.headers.iter() {
        let (name, v) = (h.name.as_bytes(), h.value);
        if name.eq_ignore_ascii_case(b"content-type") {
            // The first, as the full path reads it (a second one makes the answer invalid).
            if answer.content_type.is_none() {
                event_stream = v.starts_with(b"text/event-stream");
                answer.content_type = Some(v);
            }
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            answer.encoded |= compress::names_a_coding(v);
        } else if name.eq_ignore_ascii_case(b"cache-control") {
            answer.no_transform |= compress::is_no_transform(v);
        } else if name.eq_ignore_ascii_case(b"content-range") {
            answer.ranged = true;
        } else if name.eq_ignore_ascii_case(b"vary") {
            varies |= compress::varies_by_encoding(v);
        } else if name.eq_ignore_ascii_case(b"date") {
            dated = true;
        }
        for (i, (sec, _)) in security.clone().enumerate() {
            present[i] |= name.eq_ignore_ascii_case(sec.as_bytes());
        }
    }
    // The same rule as the full path's (`compress::decide`).
    let compression = if rules.policy.compression {
        compress::decision(&answer, rules.accepted)
    } else {
        compress::Decision {
            vary: false,
            encode: None,
        }
    };
    let encode = compression
        .encode
        .filter(|_| facts.body != ResponseBody::None);

    out.status(status, resp.reason.unwrap_or("").as_bytes());
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let v = h.value;
        match policy::response_header(name, &facts.connection) {
            Forward::Drop => continue,
            // Written below from the framing the policy read (a length only with a length).
            Forward::Framing => {
                let length = name.eq_ignore_ascii_case(b"content-length");
                let chunked = name.eq_ignore_ascii_case(b"transfer-encoding");
                if !(length || chunked)
                    || (status == 204 && facts.body == ResponseBody::None)
                    || encode.is_some()
                    || (O::FRAMES_ITSELF && chunked)
                {
                    // Connection, Upgrade; a 204's announced body that is not sent; the framing
                    // of a body the edge compresses (it is framed anew); chunking, which HTTP/2
                    // does not have.
                    continue;
                }
            }
            Forward::Keep => {}
        }
        if encode.is_some() {
            // A compressed body is another representation: no byte ranges of it, and its
            // validator is weak (RFC 9110 §8.8.1). Its coding is ours alone (the app's lines
            // could only say `identity`).
            if name.eq_ignore_ascii_case(b"accept-ranges")
                || name.eq_ignore_ascii_case(b"content-encoding")
            {
                continue;
            }
            if name.eq_ignore_ascii_case(b"etag") && !v.starts_with(b"W/") {
                let mut weak = Vec::with_capacity(v.len() + 2);
                weak.extend_from_slice(b"W/");
                weak.extend_from_slice(v);
                out.header(b"etag", &weak);
                continue;
            }
        }
        out.header(name, v);
    }
    out.header(b"x-request-id", rules.request_id);
    if !dated {
        // RFC 9110 §6.6.1: a recipient with a clock dates an answer it forwards undated.
        DATE.with_borrow_mut(|d| out.header(b"date", d.now()));
    }
    for (i, (name, value)) in security.enumerate() {
        if !present[i] {
            out.header(name.as_bytes(), value.as_bytes());
        }
    }
    if compression.vary && !varies {
        out.header(b"vary", b"Accept-Encoding");
    }
    if let Some(enc) = encode {
        out.header(b"content-encoding", enc.token().as_bytes());
    }
    // A body delimited by the upstream's close ends the client's connection too, unless the
    // edge frames it anew (compressed: chunked; or the client's protocol frames it).
    let until_close = facts.body == ResponseBody::UntilClose && encode.is_none();
    out.end(
        rules.close || (until_close && !O::FRAMES_ITSELF),
        encode.is_some() && !O::FRAMES_ITSELF,
    );
    Ok(Some(ResponseHead {
        len,
        status,
        interim: false,
        body: facts.body,
        upstream_keepalive: facts.reusable,
        event_stream,
        encode,
    }))
}

/// How the head of an answer the edge compresses ends.
const CHUNKED_END: &[u8] = b"transfer-encoding: chunked\r\n\r\n";

/// Turns the head in `out` (as [`rewrite_response`] wrote it for a compressed answer) from
/// chunked framing to `Content-Length: len`. `false`: it was not such a head (left as it is).
pub fn frame_by_length(out: &mut Vec<u8>, len: usize) -> bool {
    if !out.ends_with(CHUNKED_END) {
        return false;
    }
    out.truncate(out.len() - CHUNKED_END.len());
    let _ = write!(out, "content-length: {len}\r\n\r\n");
    true
}

/// The current HTTP date, formatted once a second per thread.
#[derive(Default)]
struct CachedDate {
    second: u64,
    text: String,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = std::time::SystemTime::now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        self.text.as_bytes()
    }
}

thread_local! {
    static DATE: std::cell::RefCell<CachedDate> = std::cell::RefCell::new(CachedDate::default());
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Where `part` (a subslice of `buf`) sits in `buf`.
fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    if start > buf.len() || start + part.len() > buf.len() {
        return 0..0; // not from `buf` (an empty default): nothing to point at
    }
    start..start + part.len()
}

/// Follows a chunked body (RFC 9112 §7.1) as its bytes pass through unchanged, to know where it
/// ends. Strict, as the full path is: hex sizes of at most 15 digits, extensions only after `;`,
/// every line ended by CRLF. Anything looser is where two readers of one body disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// In a chunk-size's digits.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the digits: whitespace before a `;`.
    SizeSpace {
        size: u64,
    },
    /// In a chunk extension.
    Extension {
        size: u64,
    },
    /// The size line's CR was read: its LF must follow.
    SizeLf {
        size: u64,
    },
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines; `empty` while the current line has nothing in it.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

impl Default for Chunks {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunks {
    pub fn new() -> Self {
        Chunks::Size { size: 0, digits: 0 }
    }

    /// Follows `bytes`; returns how many belong to the body (all of them, unless it ended
    /// inside). `Err` on malformed framing.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        self.feed_with(bytes, |_| {})
    }

    /// As [`Chunks::feed`], handing each piece of chunk data to `data` (decoding the body).
    pub fn feed_with(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            match self {
                Chunks::Done => return Ok(i),
                Chunks::Data(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    data(&bytes[i..i + take as usize]);
                    i += take as usize;
                    if *left == 0 {
                        *self = Chunks::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = bytes[i];
            i += 1;
            let control = (b < 0x20 && b != b'\t') || b == 0x7f;
            *self = match *self {
                Chunks::Size { size, digits } => match b {
                    b'\r' if digits > 0 => Chunks::SizeLf { size },
                    b';' if digits > 0 => Chunks::Extension { size },
                    b' ' | b'\t' if digits > 0 => Chunks::SizeSpace { size },
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(Malformed)?;
                        if digits >= 15 {
                            return Err(Malformed);
                        }
                        Chunks::Size {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                        }
                    }
                },
                // RFC 9112 §7.1.1: whitespace (BWS) only before an extension's `;`.
                Chunks::SizeSpace { size } => match b {
                    b' ' | b'\t' => Chunks::SizeSpace { size },
                    b';' => Chunks::Extension { size },
                    _ => return Err(Malformed),
                },
                Chunks::Extension { size } => match b {
                    b'\r' => Chunks::SizeLf { size },
                    _ if control => return Err(Malformed),
                    _ => Chunks::Extension { size },
                },
                Chunks::SizeLf { size } => match b {
                    b'\n' if size == 0 => Chunks::Trailer { empty: true },
                    b'\n' => Chunks::Data(size),
                    _ => return Err(Malformed),
                },
                Chunks::DataCr => match b {
                    b'\r' => Chunks::DataLf,
                    _ => return Err(Malformed),
                },
                Chunks::DataLf => match b {
                    b'\n' => Chunks::new(),
                    _ => return Err(Malformed),
                },
                Chunks::Trailer { empty } => match b {
                    b'\r' => Chunks::TrailerLf { empty },
                    _ if control => return Err(Malformed),
                    _ => Chunks::Trailer { empty: false },
                },
                Chunks::TrailerLf { empty } => match b {
                    b'\n' if empty => Chunks::Done,
                    b'\n' => Chunks::Trailer { empty: true },
                    _ => return Err(Malformed),
                },
                Chunks::Data(_) | Chunks::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }

    pub fn done(&self) -> bool {
        *self == Chunks::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use spinforge_state::policy::EdgePolicy;

    fn head(buf: &[u8]) -> RequestHead {
        match parse_request(buf, &mut Vec::new()) {
            Parsed::Head(h) => h,
            other => panic!("not a head: {other:?}"),
        }
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_do() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        // Fed whole, and byte by byte.
        let mut c = Chunks::new();
        assert_eq!(c.feed(body), Ok(body.len() - 4));
        assert!(c.done());
        let mut c = Chunks::new();
        let mut n = 0;
        for b in body.iter() {
            n += c.feed(std::slice::from_ref(b)).expect("valid");
        }
        assert_eq!(n, body.len() - 4);
        let mut c = Chunks::new();
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok(5));
        assert!(c.done());
        assert!(Chunks::new().feed(b"5 ;x\r\nhello\r\n").is_ok());
    }

    #[test]
    fn lenient_chunk_framing_is_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"1\r\nab",
            b"ffffffffffffffff1\r\n",
            b"1\r2\r\nab\r\n",    // a CR inside the size
            b"1\nab\r\n",         // a bare LF
            b"1 2\r\nab\r\n",     // digits after whitespace
            b"0x5\r\nhello\r\n",  // a prefix
            b" 5\r\nhello\r\n",   // leading whitespace
            b"5\r\nhello\n",      // data ended by a bare LF
            b"0\r\nx: 1\n\r\n",   // a trailer ended by a bare LF
            b"5;a\x00b\r\nhello", // a control byte in an extension
            b"5 \r\nhello\r\n",   // whitespace with no extension after it
        ] {
            assert!(
                Chunks::new().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn requests_the_fast_path_does_not_take_go_to_the_full_path() {
        let ok = b"GET /a?b HTTP/1.1\r\nHost: x.test\r\nContent-Length: 3\r\nX-Request-Id: r1\r\n\r\nabc";
        let h = head(ok);
        assert_eq!(h.unfit, None);
        assert_eq!(&ok[h.path.clone()], b"/a?b");
        assert_eq!(&ok[h.authority.clone()], b"x.test");
        assert_eq!(h.content_length, 3);
        assert_eq!(h.len, ok.len() - 3);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x", &mut Vec::new()),
            Parsed::Partial
        );
        for refused in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", // no tunnels: the full path refuses
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ] {
            assert_eq!(head(refused).unfit, Some(Unfit::Refused));
        }
        for shape in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(head(shape).unfit, Some(Unfit::Shape));
        }
        assert_eq!(
            parse_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut Vec::new()),
            Parsed::Unparsable
        );
    }

    #[test]
    fn upstream_requests_carry_the_edges_forwarding_headers_only() {
        let req = b"POST /x HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\nX-Request-Id: fake\r\nContent-Length: 2\r\n\r\n";
        let mut out = Vec::new();
        let Parsed::Head(h) = parse_request(req, &mut out) else {
            panic!("a head")
        };
        finish_upstream_request(
            &mut out,
            Some("10.0.0.1".parse().expect("ip")),
            "http",
            &req[h.authority],
            b"rid",
        );
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a.test\r\nx-request-id: rid\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_targets_are_routed_by_their_authority() {
        let req = b"GET http://site.test/p?q#f HTTP/1.1\r\nHost: site.test\r\n\r\n";
        let mut out = Vec::new();
        let Parsed::Head(h) = parse_request(req, &mut out) else {
            panic!("a head")
        };
        assert_eq!(&req[h.authority], b"site.test");
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "GET /p?q HTTP/1.1\r\nHost: site.test\r\n"
        );
        let token =
            b"GET http://a.test/.well-known/acme-challenge/t HTTP/1.1\r\nHost: a.test\r\n\r\n";
        assert!(head(token).acme);
        // Naming two hosts is refused (by the full path, from the same policy).
        let two = b"GET http://evil.example/x HTTP/1.1\r\nHost: app.test\r\n\r\n";
        assert_eq!(head(two).unfit, Some(Unfit::Refused));
    }

    fn rules(policy: &EdgePolicy) -> ResponseRules<'_> {
        ResponseRules {
            request_id: b"rid",
            head_request: false,
            policy,
            hsts: false,
            accepted: None,
            close: false,
        }
    }

    #[test]
    fn responses_are_rewritten_and_framed() {
        let mut policy = EdgePolicy::default();
        policy.security_headers.frame_options = Some("DENY".into());
        let rules = rules(&policy);
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nX-Frame-Options: SAMEORIGIN\r\nDate: d\r\n\r\nhello";
        let mut out = Vec::new();
        let head = rewrite_response(resp, &mut out, &rules)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.body, ResponseBody::Length(5));
        assert!(head.upstream_keepalive);
        assert_eq!(head.len, resp.len() - 5);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
             X-Frame-Options: SAMEORIGIN\r\nDate: d\r\nx-request-id: rid\r\nx-content-type-options: nosniff\r\n"
        ), "{text}");
        assert!(text.ends_with("vary: Accept-Encoding\r\n\r\n"), "{text}");
        // A length the upstream lists in Connection still frames the answer.
        let mut out = Vec::new();
        let head = rewrite_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\n",
            &mut out,
            &rules,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(head.body, ResponseBody::Length(5));
        assert!(
            String::from_utf8(out)
                .expect("ascii")
                .contains("Content-Length: 5\r\n")
        );
        let mut out = Vec::new();
        let head = rewrite_response(b"HTTP/1.0 200 OK\r\n\r\n", &mut out, &rules)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.body, ResponseBody::UntilClose);
        assert!(!head.upstream_keepalive);
        assert!(
            String::from_utf8(out)
                .expect("ascii")
                .contains("connection: close")
        );
        // A 204 announcing a body: none is passed on, and the connection is not reused.
        let mut out = Vec::new();
        let head = rewrite_response(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            &mut out,
            &rules,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(head.body, ResponseBody::None);
        assert!(!head.upstream_keepalive);
        assert!(
            !String::from_utf8(out)
                .expect("ascii")
                .contains("Content-Length")
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert_eq!(
                rewrite_response(bad, &mut Vec::new(), &rules).map(|_| ()),
                Err(Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A chunked encoding of `parts` (empty parts skipped: a zero size ends the body).
    fn encode_chunked(parts: &[Vec<u8>], ext: bool, trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts.iter().filter(|p| !p.is_empty()) {
            out.extend_from_slice(format!("{:x}", p.len()).as_bytes());
            if ext {
                out.extend_from_slice(b" ;name=\"v\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if trailer {
            out.extend_from_slice(b"x-t: 1\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the upstream writes, feeding it whole or split anywhere gives one answer,
        /// and never a panic.
        #[test]
        fn chunk_framing_does_not_depend_on_how_bytes_arrive(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            cut in 0usize..256,
        ) {
            let cut = cut.min(bytes.len());
            let mut whole = Chunks::new();
            let all = whole.feed(&bytes);
            let mut split = Chunks::new();
            let split_result = split.feed(&bytes[..cut]).and_then(|a| {
                if split.done() { Ok(a) } else { split.feed(&bytes[cut..]).map(|b| a + b) }
            });
            prop_assert_eq!(all.is_ok(), split_result.is_ok());
            if let (Ok(a), Ok(b)) = (all, split_result) {
                prop_assert_eq!(a, b);
                prop_assert_eq!(whole.done(), split.done());
            }
        }

        /// A well-formed chunked body is followed to its exact end, and what follows it is not
        /// taken for the body.
        #[test]
        fn well_formed_chunked_bodies_end_exactly(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            ext in any::<bool>(),
            trailer in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let body = encode_chunked(&parts, ext, trailer);
            let mut stream = body.clone();
            stream.extend_from_slice(&tail);
            let mut c = Chunks::new();
            prop_assert_eq!(c.feed(&stream), Ok(body.len()));
            prop_assert!(c.done());
        }

        /// Any bytes as a request head: no panic, and a head the fast path takes is written on
        /// with exactly one Host, at most one length, and nothing a client may not say.
        #[test]
        fn request_heads_are_written_on_safely(
            method in prop::sample::select(vec!["GET", "POST", "HEAD", "get", "PUT"]),
            target in prop::sample::select(vec!["/", "/a?b", "http://h.test/x", "*", "//x", "http://u@h/"]),
            headers in proptest::collection::vec((
                prop::sample::select(vec!["Host", "host", "Content-Length", "Transfer-Encoding",
                    "Connection", "X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Request-Id",
                    "Keep-Alive", "TE", "Upgrade", "Expect", "X-Other", "Content-length "]),
                prop::sample::select(vec!["h.test", "5", "0", "5, 5", "chunked", "close",
                    "x-other", "content-length", "keep-alive", "", "1.2.3.4", " 7 "]),
            ), 0..8),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
            for (n, v) in &headers {
                buf.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            buf.extend_from_slice(b"\r\n");
            let mut out = Vec::new();
            let _ = parse_request(&garbage, &mut Vec::new());
            if let Parsed::Head(h) = parse_request(&buf, &mut out) && h.unfit.is_none() {
                finish_upstream_request(&mut out, None, "http", &buf[h.authority.clone()], b"id");
                let mut parsed = [httparse::EMPTY_HEADER; 80];
                let mut up = httparse::Request::new(&mut parsed);
                prop_assert!(matches!(up.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
                prop_assert!(up.path.is_some_and(|p| p.starts_with('/') || p == "*"));
                let count = |name: &str| up.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
                prop_assert_eq!(count("host"), 1);
                prop_assert!(count("content-length") <= 1);
                for never in ["transfer-encoding", "connection", "forwarded", "x-real-ip", "keep-alive", "te", "upgrade"] {
                    prop_assert_eq!(count(never), 0, "{}", never);
                }
                prop_assert_eq!(count("x-forwarded-for"), 0);
                prop_assert_eq!(count("x-request-id"), 1);
            }
        }

        /// Any bytes as an answer head: no panic; an answer passed on says how it ends, or says
        /// the connection closes after it.
        #[test]
        fn answers_passed_on_are_framed(
            status in prop::sample::select(vec![200u16, 204, 304, 103, 404, 500]),
            headers in proptest::collection::vec((
                prop::sample::select(vec!["Content-Length", "Transfer-Encoding", "Connection",
                    "Keep-Alive", "X-Request-Id", "Content-Type", "Upgrade", "content-length"]),
                prop::sample::select(vec!["5", "chunked", "close", "content-length",
                    "transfer-encoding", "gzip", "text/html", "5, 5", "keep-alive"]),
            ), 0..6),
            head_request in any::<bool>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let policy = EdgePolicy::default();
            let mut rules = rules(&policy);
            rules.head_request = head_request;
            let _ = rewrite_response(&garbage, &mut Vec::new(), &rules);
            let mut buf = format!("HTTP/1.1 {status} X\r\n").into_bytes();
            for (n, v) in &headers {
                buf.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            buf.extend_from_slice(b"\r\n");
            let mut out = Vec::new();
            if let Ok(Some(h)) = rewrite_response(&buf, &mut out, &rules) && !h.interim {
                let mut parsed = [httparse::EMPTY_HEADER; 80];
                let mut resp = httparse::Response::new(&mut parsed);
                prop_assert!(matches!(resp.parse(&out), Ok(httparse::Status::Complete(_))));
                let has = |name: &str, value: &str| resp.headers.iter().any(|x| {
                    x.name.eq_ignore_ascii_case(name) && x.value.eq_ignore_ascii_case(value.as_bytes())
                });
                let count = |name: &str| resp.headers.iter().filter(|x| x.name.eq_ignore_ascii_case(name)).count();
                prop_assert!(count("content-length") + count("transfer-encoding") <= 1);
                prop_assert_eq!(count("x-request-id"), 1);
                prop_assert_eq!(count("keep-alive"), 0);
                match h.body {
                    ResponseBody::Length(_) => prop_assert_eq!(count("content-length"), 1),
                    ResponseBody::Chunked => prop_assert!(has("transfer-encoding", "chunked")),
                    ResponseBody::UntilClose => prop_assert!(has("connection", "close")),
                    ResponseBody::None => {}
                }
            }
        }
    }
}
