//! HTTP/1.1 message heads for the fast path: what a request or response says about its framing
//! and the headers the edge rewrites, read in one pass over httparse's output, and the heads the
//! edge writes on (hop-by-hop headers dropped, forwarding headers set) built into a reused buffer.

use crate::compress;
use crate::proxy::HOP_BY_HOP;
use std::io::Write as _;
use std::net::IpAddr;
use std::ops::Range;

/// More headers than this and the request goes to Pingora (which has its own limits).
pub const MAX_HEADERS: usize = 64;
/// Responses may carry more (cookies, CSP, …); more than this is a 502.
const MAX_RESPONSE_HEADERS: usize = 160;

/// Why a request is left to Pingora's full path. Each is rare in steady traffic, or needs what
/// only that path does (upgrades, chunked uploads, wake-and-hold, error pages, compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// Incomplete head that filled the buffer, a parse error, or more than [`MAX_HEADERS`].
    Head,
    /// Not HTTP/1.1, or a method with special framing (CONNECT).
    Shape,
    /// Transfer-Encoding, Expect, Upgrade, several or unreadable Content-Lengths, or a
    /// Connection header naming other headers: framing and smuggling checks live in one place.
    Framing,
}

/// What the fast path needs from a request head. Ranges index the buffer the head was read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub len: usize,
    pub method: Range<usize>,
    pub path: Range<usize>,
    pub host: Option<Range<usize>>,
    pub accept: Option<Range<usize>>,
    pub accept_encoding: Option<Range<usize>>,
    pub request_id: Option<Range<usize>>,
    pub content_length: u64,
    /// The client asked to close after this request (`Connection: close`).
    pub close: bool,
}

/// Finds one complete request head at the start of `buf`. `Ok(None)`: more bytes are needed.
///
/// In the same pass it writes the start of the upstream's request head into `out` (replacing
/// what was there): the request line and the client's headers less hop-by-hop and forwarding
/// ones. [`finish_upstream_request`] adds the edge's own.
pub fn parse_request(buf: &[u8], out: &mut Vec<u8>) -> Result<Option<RequestHead>, Unfit> {
    out.clear();
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Unfit::Head),
    };
    if req.version != Some(1) {
        return Err(Unfit::Shape);
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err(Unfit::Head);
    };
    if method == "CONNECT" {
        return Err(Unfit::Shape);
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut head = RequestHead {
        len,
        method: range_of(buf, method.as_bytes()),
        path: range_of(buf, path.as_bytes()),
        host: None,
        accept: None,
        accept_encoding: None,
        request_id: None,
        content_length: 0,
        close: false,
    };
    let mut lengths = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if !dropped_from_request(name) {
            push_header(out, name, value);
        }
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if head.host.is_some() {
                    return Err(Unfit::Framing);
                }
                head.host = Some(range_of(buf, value));
            }
            6 if name.eq_ignore_ascii_case(b"accept") => head.accept = Some(range_of(buf, value)),
            6 if name.eq_ignore_ascii_case(b"expect") => return Err(Unfit::Framing),
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Err(Unfit::Framing),
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        return Err(Unfit::Framing);
                    }
                }
            }
            12 if name.eq_ignore_ascii_case(b"x-request-id") => {
                head.request_id = Some(range_of(buf, value));
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                head.content_length = parse_length(value).ok_or(Unfit::Framing)?;
            }
            15 if name.eq_ignore_ascii_case(b"accept-encoding") => {
                head.accept_encoding = Some(range_of(buf, value));
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Err(Unfit::Framing),
            _ => {}
        }
    }
    if lengths > 1 {
        return Err(Unfit::Framing);
    }
    Ok(Some(head))
}

/// Headers that describe one connection (RFC 9110 §7.6.1), or that the edge sets itself.
fn dropped_from_request(name: &[u8]) -> bool {
    const OURS: &[&str] = &[
        "connection",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ];
    OURS.iter()
        .chain(HOP_BY_HOP)
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// Ends the upstream request head [`parse_request`] began: X-Forwarded-For/Proto/Host (`host`:
/// the client's Host, as sent) and X-Request-Id.
pub fn finish_upstream_request(
    out: &mut Vec<u8>,
    client_ip: Option<IpAddr>,
    host: &[u8],
    request_id: &[u8],
) {
    if let Some(ip) = client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        let _ = write!(out, "{ip}");
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    if !host.is_empty() {
        push_header(out, b"x-forwarded-host", host);
    }
    push_header(out, b"x-request-id", request_id);
    out.extend_from_slice(b"\r\n");
}

/// A response head or chunked body the edge cannot pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    None,
    Exactly(u64),
    Chunked,
    /// Until the upstream closes (no length given): the client connection closes after it.
    UntilClose,
}

/// What the fast path learned from a response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub body: BodyLength,
    /// The upstream connection can carry another request afterwards.
    pub upstream_keepalive: bool,
    pub event_stream: bool,
}

/// Per-app response rules the rewrite applies.
#[derive(Debug, Clone, Copy)]
pub struct ResponseRules<'a> {
    pub request_id: &'a [u8],
    pub head_request: bool,
    pub compression: bool,
    pub security: [(&'static str, Option<&'a str>); 3],
    /// Ask the client to close (`Connection: close`).
    pub close: bool,
}

/// Parses the response head at the start of `buf` and writes the head for the client into `out`.
/// `Ok(None)`: incomplete. `Err(Malformed)`: not a response the edge can pass on.
pub fn rewrite_response(
    buf: &[u8],
    out: &mut Vec<u8>,
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
    if status == 101 {
        return Err(Malformed); // no upgrade was asked for
    }
    let version = resp.version.unwrap_or(0);
    if (100..200).contains(&status) {
        // An interim answer (103 Early Hints, …): passed on as it is; the caller reads on.
        out.extend_from_slice(&buf[..len]);
        return Ok(Some(ResponseHead {
            len,
            status,
            body: BodyLength::None,
            upstream_keepalive: true,
            event_stream: false,
        }));
    }
    // First pass: framing and what the rewrite depends on.
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut keepalive = version == 1;
    let mut event_stream = false;
    let mut named_by_connection = false;
    let mut present = [false; 3];
    let mut content_type = None;
    let mut content_encoding = None;
    let mut no_transform = false;
    let mut ranged = false;
    let mut varies = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let v = h.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(v).ok_or(Malformed)?;
            if length.is_some_and(|l| l != n) {
                return Err(Malformed);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only chunked as the last coding frames a response we can pass through.
            let last = v.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !chunked {
                keepalive = false;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keepalive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keepalive |= version == 0;
                } else if !token.is_empty() {
                    named_by_connection = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-type") {
            event_stream = v.starts_with(b"text/event-stream");
            content_type = Some(v);
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            content_encoding = Some(v);
        } else if name.eq_ignore_ascii_case(b"cache-control") {
            no_transform |= compress::is_no_transform(v);
        } else if name.eq_ignore_ascii_case(b"content-range") {
            ranged = true;
        } else if name.eq_ignore_ascii_case(b"vary") {
            varies |= compress::varies_by_encoding(v);
        }
        for (i, (sec, _)) in rules.security.iter().enumerate() {
            present[i] |= name.eq_ignore_ascii_case(sec.as_bytes());
        }
    }
    let body = if rules.head_request || status == 204 || status == 304 {
        BodyLength::None
    } else if chunked {
        BodyLength::Chunked
    } else if let Some(n) = length {
        BodyLength::Exactly(n)
    } else {
        keepalive = false;
        BodyLength::UntilClose
    };
    // Names listed in Connection are hop-by-hop too; rare, so only then is a list kept.
    let connection_named: Vec<&[u8]> = if named_by_connection {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .collect()
    } else {
        Vec::new()
    };

    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let hop = ["connection", "upgrade", "x-request-id"]
            .iter()
            .chain(HOP_BY_HOP)
            .map(|n| n.as_bytes())
            .chain(connection_named.iter().copied())
            .any(|n| name.eq_ignore_ascii_case(n));
        // A length beside chunked framing is dropped (RFC 9112 §6.3); the body passes as chunks.
        let stale_length = chunked && name.eq_ignore_ascii_case(b"content-length");
        if hop || stale_length {
            continue;
        }
        push_header(out, name, h.value);
    }
    push_header(out, b"x-request-id", rules.request_id);
    for (i, (name, value)) in rules.security.iter().enumerate() {
        if let Some(v) = value
            && !present[i]
        {
            push_header(out, name.as_bytes(), v.as_bytes());
        }
    }
    // As `compress::decide` does when the client accepts no encoding we use: the answer
    // depended on Accept-Encoding all the same.
    if rules.compression
        && !varies
        && compress::may_compress(status, content_type, content_encoding, no_transform, ranged)
    {
        out.extend_from_slice(b"vary: Accept-Encoding\r\n");
    }
    if rules.close || matches!(body, BodyLength::UntilClose) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        body,
        upstream_keepalive: keepalive,
        event_stream,
    }))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A Content-Length: digits only (no sign, no spaces inside), at most 19 of them.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Where `part` (a subslice of `buf`) sits in `buf`.
fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Follows a chunked body as its bytes pass through unchanged, to know where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// In a chunk-size line: the size so far, and whether an extension began.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data: the CRLF.
    DataEnd {
        cr: bool,
    },
    /// After the last chunk: trailer lines; `empty` while the current line has nothing in it.
    Trailer {
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
        Chunks::Size {
            size: 0,
            digits: 0,
            ext: false,
        }
    }

    /// Follows `bytes`; returns how many belong to the body (all of them, unless it ended
    /// inside). `Err` on malformed framing.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            match self {
                Chunks::Done => return Ok(i),
                Chunks::Data(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        *self = Chunks::DataEnd { cr: false };
                    }
                    continue;
                }
                _ => {}
            }
            let b = bytes[i];
            i += 1;
            *self = match *self {
                Chunks::Size { size, digits, ext } => match b {
                    b'\n' if digits == 0 => return Err(Malformed),
                    b'\n' if size == 0 => Chunks::Trailer { empty: true },
                    b'\n' => Chunks::Data(size),
                    b'\r' => Chunks::Size { size, digits, ext },
                    _ if ext => Chunks::Size { size, digits, ext },
                    b';' | b' ' | b'\t' => Chunks::Size {
                        size,
                        digits,
                        ext: true,
                    },
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(Malformed)?;
                        if digits >= 15 {
                            return Err(Malformed);
                        }
                        Chunks::Size {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                            ext,
                        }
                    }
                },
                Chunks::DataEnd { cr } => match b {
                    b'\r' if !cr => Chunks::DataEnd { cr: true },
                    b'\n' => Chunks::new(),
                    _ => return Err(Malformed),
                },
                Chunks::Trailer { empty } => match b {
                    b'\n' if empty => Chunks::Done,
                    b'\n' => Chunks::Trailer { empty: true },
                    b'\r' => Chunks::Trailer { empty },
                    _ => Chunks::Trailer { empty: false },
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
        assert!(Chunks::new().feed(b"zz\r\n").is_err());
        assert!(Chunks::new().feed(b"\r\n").is_err());
        assert!(Chunks::new().feed(b"1\r\nab").is_err());
        assert!(Chunks::new().feed(b"ffffffffffffffff1\r\n").is_err());
    }

    #[test]
    fn requests_with_framing_only_pingora_checks_are_left_to_it() {
        let ok = b"GET /a?b HTTP/1.1\r\nHost: x.test\r\nContent-Length: 3\r\nX-Request-Id: r1\r\n\r\nabc";
        let head = parse_request(ok, &mut Vec::new())
            .expect("fits")
            .expect("complete");
        assert_eq!(&ok[head.path.clone()], b"/a?b");
        assert_eq!(&ok[head.host.clone().expect("host")], b"x.test");
        assert_eq!(head.content_length, 3);
        assert_eq!(head.len, ok.len() - 3);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x", &mut Vec::new()),
            Ok(None)
        );
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-secret\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(
                parse_request(bad, &mut Vec::new()).map(|_| ()),
                Err(Unfit::Framing)
            );
        }
        assert_eq!(
            parse_request(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", &mut Vec::new()).map(|_| ()),
            Err(Unfit::Shape)
        );
        assert_eq!(
            parse_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut Vec::new()).map(|_| ()),
            Err(Unfit::Head)
        );
    }

    #[test]
    fn upstream_requests_carry_forwarding_headers_and_no_hop_by_hop_ones() {
        let req = b"POST /x HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: fake\r\nContent-Length: 2\r\n\r\n";
        let mut out = Vec::new();
        let head = parse_request(req, &mut out)
            .expect("fits")
            .expect("complete");
        let host = &req[head.host.expect("host")];
        finish_upstream_request(
            &mut out,
            Some("10.0.0.1".parse().expect("ip")),
            host,
            b"rid",
        );
        let text = String::from_utf8(out).expect("ascii");
        assert_eq!(
            text,
            "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a.test\r\nx-request-id: rid\r\n\r\n"
        );
    }

    #[test]
    fn responses_are_rewritten_and_framed() {
        let rules = ResponseRules {
            request_id: b"rid",
            head_request: false,
            compression: true,
            security: [
                ("x-content-type-options", Some("nosniff")),
                ("referrer-policy", None),
                ("x-frame-options", Some("DENY")),
            ],
            close: false,
        };
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nX-Frame-Options: SAMEORIGIN\r\n\r\nhello";
        let mut out = Vec::new();
        let head = rewrite_response(resp, &mut out, &rules)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.body, BodyLength::Exactly(5));
        assert!(head.upstream_keepalive);
        assert_eq!(head.len, resp.len() - 5);
        let text = String::from_utf8(out).expect("ascii");
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
             X-Frame-Options: SAMEORIGIN\r\nx-request-id: rid\r\nx-content-type-options: nosniff\r\n\
             vary: Accept-Encoding\r\n\r\n"
        );
        let mut out = Vec::new();
        let head = rewrite_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            &mut out,
            &rules,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(head.body, BodyLength::Chunked);
        assert!(
            !String::from_utf8(out)
                .expect("ascii")
                .contains("Content-Length")
        );
        let mut out = Vec::new();
        let head = rewrite_response(b"HTTP/1.0 200 OK\r\n\r\n", &mut out, &rules)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.body, BodyLength::UntilClose);
        assert!(!head.upstream_keepalive);
        assert!(
            String::from_utf8(out)
                .expect("ascii")
                .contains("connection: close")
        );
    }
}
