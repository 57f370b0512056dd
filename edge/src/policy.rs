//! The one request policy. Both front ends — the fast path ([`crate::fast`]) and Pingora's full
//! path ([`crate::proxy`]) — parse a message head their own way, then ask this module every
//! question whose answer must not depend on which of them took the request:
//!
//! - what a request is for and whether its framing is acceptable ([`read_request`]: the target's
//!   authority wins over Host, one Host, one plain Content-Length, `chunked` as the only
//!   transfer coding, never both);
//! - which request headers reach the app and which the edge sets itself ([`request_header`],
//!   [`FORWARDING`]: a client cannot claim an address, scheme or request id);
//! - how an answer is framed, whether the edge can pass it on at all, and whether its upstream
//!   connection may carry another request ([`read_response`]);
//! - which answer headers reach the client and which the edge adds ([`response_header`],
//!   [`security_headers`]);
//! - whether a failed exchange may be sent again ([`retry_after`]).
//!
//! Pure functions over bytes: no I/O, and no allocation unless a message is unusual.

use crate::errors::EdgeError;
use spinforge_state::policy::EdgePolicy;
use std::borrow::Cow;

/// Headers that describe one connection (RFC 9110 §7.6.1): never forwarded, either way.
/// `Connection`, `Transfer-Encoding`, `Content-Length` and `Upgrade` frame the message and are
/// written by whichever front end frames it ([`Forward::Framing`]).
pub const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    // Credentials for a proxy, not for the app (RFC 9110 §11.7): the edge is the proxy.
    "proxy-authorization",
    "proxy-authenticate",
];

/// Request headers through which a client would speak for the edge (its address, scheme, host,
/// port, prefix, or the request id): dropped, and the edge's own set instead. Apps trust these.
const CLIENT_CLAIMS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-request-id",
];

/// The forwarding headers the edge sets on every proxied request.
pub const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// How many `Connection` headers a message may carry (each may list several names).
const MAX_CONNECTION_HEADERS: usize = 4;

/// The HTTP version a head arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    /// HTTP/2: framing is the protocol's own; `authority` is `:authority`.
    Http2,
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    None,
    Length(u64),
    Chunked,
}

/// More `Connection` headers than a message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyConnectionHeaders;

/// The values of a message's `Connection` headers, each a comma-separated list of names.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionHeaders<'a> {
    values: [&'a [u8]; MAX_CONNECTION_HEADERS],
    count: usize,
}

impl<'a> ConnectionHeaders<'a> {
    /// Adds one `Connection` header's value; `Err` past [`MAX_CONNECTION_HEADERS`].
    pub fn push_value(&mut self, value: &'a [u8]) -> Result<(), TooManyConnectionHeaders> {
        *self
            .values
            .get_mut(self.count)
            .ok_or(TooManyConnectionHeaders)? = value;
        self.count += 1;
        Ok(())
    }

    fn tokens(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.values[..self.count]
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
    }

    fn has(&self, token: &[u8]) -> bool {
        self.tokens().any(|t| t.eq_ignore_ascii_case(token))
    }

    /// Whether `name` is listed (and so is hop-by-hop), apart from the names a front end needs
    /// to frame the message: those are never dropped for being listed (a listed length must
    /// not leave an answer without framing).
    pub fn names(&self, name: &[u8]) -> bool {
        self.count > 0 && !is_framing(name) && self.has(name)
    }
}

/// What a request head says, read once for both front ends. Slices borrow the head.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    /// The authority the request is for, as sent: the absolute-form target's when there is one
    /// (RFC 9112 §3.2.2: it wins over Host), else Host's (or `:authority`'s).
    pub authority: &'a [u8],
    /// The authority came from the target: the app is sent an origin-form target and this
    /// authority as Host.
    pub from_target: bool,
    /// The target as the app gets it: origin form (path and query), or `*` for OPTIONS.
    pub path: Cow<'a, [u8]>,
    pub body: RequestBody,
    /// The client will close after this request (`Connection: close`, or HTTP/1.0 without
    /// `keep-alive`).
    pub close: bool,
    /// An `Upgrade` request (WebSocket).
    pub upgrade: bool,
    /// `Expect` was sent (the full path answers `100 Continue`).
    pub expect: bool,
    pub request_id: Option<&'a [u8]>,
    pub accept: Option<&'a [u8]>,
    pub accept_encoding: Option<&'a [u8]>,
    pub connection: ConnectionHeaders<'a>,
}

impl RequestFacts<'_> {
    /// The normalized host to route by.
    pub fn host(&self) -> Option<Cow<'_, str>> {
        crate::routing::normalize_host(self.authority)
    }

    /// Whether this is an ACME HTTP-01 token request (by the target's path, whatever its form).
    pub fn is_acme_challenge(&self) -> bool {
        self.path
            .starts_with(crate::challenge::CHALLENGE_PATH.as_bytes())
    }

    /// Nothing in the request makes sending it twice unsafe: an idempotent method and no body.
    pub fn replayable(&self, method: &[u8]) -> bool {
        matches!(self.body, RequestBody::None)
            && http::Method::from_bytes(method).is_ok_and(|m| m.is_idempotent())
    }
}

/// Reads a request head: what it is for, and whether its framing is one the edge accepts.
/// `Err` is the answer to give (400): the request goes nowhere, and its connection closes.
pub fn read_request<'a, I>(
    method: &[u8],
    target: &'a [u8],
    version: Version,
    headers: I,
) -> Result<RequestFacts<'a>, EdgeError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let (from_target, target_authority, path) = read_target(method, target, version)?;
    let mut facts = RequestFacts {
        authority: target_authority.unwrap_or_default(),
        from_target,
        path,
        body: RequestBody::None,
        close: version == Version::Http10,
        upgrade: false,
        expect: false,
        request_id: None,
        accept: None,
        accept_encoding: None,
        connection: ConnectionHeaders::default(),
    };
    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut upgrade_header = false;
    for (name, value) in headers {
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if host.is_some() {
                    return Err(EdgeError::BadRequest); // which one is it for?
                }
                host = Some(value);
            }
            6 if name.eq_ignore_ascii_case(b"accept") => {
                facts.accept.get_or_insert(value);
            }
            6 if name.eq_ignore_ascii_case(b"expect") => facts.expect = true,
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade_header = true,
            10 if name.eq_ignore_ascii_case(b"connection") => facts
                .connection
                .push_value(value)
                .map_err(|_| EdgeError::BadRequest)?,
            12 if name.eq_ignore_ascii_case(b"x-request-id") => {
                facts.request_id.get_or_insert(value);
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                // One, and plain digits: `5, 5`, `+5` and a second header are refused, so that
                // no reader downstream can see another length than ours.
                if length.is_some() {
                    return Err(EdgeError::BadRequest);
                }
                length = Some(parse_length(value).ok_or(EdgeError::BadRequest)?);
            }
            15 if name.eq_ignore_ascii_case(b"accept-encoding") => {
                facts.accept_encoding.get_or_insert(value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                // `chunked`, once, alone: other codings are not ours to decode, and a list or a
                // second header is where two readers start to disagree.
                if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(EdgeError::BadRequest);
                }
                chunked = true;
            }
            _ => {}
        }
    }
    if chunked && (length.is_some() || version == Version::Http10) {
        return Err(EdgeError::BadRequest); // RFC 9112 §6.1: a smuggling shape; never guess
    }
    facts.body = match (chunked, length) {
        (true, _) => RequestBody::Chunked,
        (false, Some(0) | None) => RequestBody::None,
        (false, Some(n)) => RequestBody::Length(n),
    };
    if version == Version::Http2 {
        // The protocol frames bodies; a length is only a hint here, checked by the h2 layer.
        facts.body = match length {
            Some(n) if n > 0 => RequestBody::Length(n),
            _ if chunked => return Err(EdgeError::BadRequest),
            _ => RequestBody::None,
        };
    }
    if !from_target {
        facts.authority = match host {
            Some(h) => h,
            None => return Err(EdgeError::NoHost),
        };
    } else if host.is_none() && version == Version::Http11 {
        return Err(EdgeError::NoHost); // RFC 9112 §3.2: HTTP/1.1 always sends Host
    } else if host.is_some_and(|h| h != facts.authority) {
        // RFC 9112 §3.2.2 lets the target's authority win; a request that names two hosts is
        // refused instead, as Pingora's parser does, so that no reader routes it elsewhere.
        return Err(EdgeError::BadRequest);
    }
    if facts.authority.trim_ascii().is_empty() {
        return Err(EdgeError::NoHost);
    }
    if version != Version::Http2 {
        if facts.connection.has(b"close") {
            facts.close = true;
        } else if version == Version::Http10 && facts.connection.has(b"keep-alive") {
            facts.close = false;
        }
    }
    facts.upgrade = upgrade_header && facts.connection.has(b"upgrade");
    // A request that asks for its own framing or routing to be dropped on the way: no reader
    // can agree on what it means.
    if ["host", "content-length", "transfer-encoding"]
        .iter()
        .any(|n| facts.connection.has(n.as_bytes()))
    {
        return Err(EdgeError::BadRequest);
    }
    Ok(facts)
}

/// The request target's forms (RFC 9112 §3.2): origin (`/p?q`), absolute (`http://a/p`),
/// asterisk (`*`, OPTIONS only). `(from_target, authority, origin-form path)`.
#[allow(clippy::type_complexity)]
fn read_target<'a>(
    method: &[u8],
    target: &'a [u8],
    version: Version,
) -> Result<(bool, Option<&'a [u8]>, Cow<'a, [u8]>), EdgeError> {
    // A fragment is not part of a request target (RFC 9112 §3.2): not sent on.
    let target = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    if target.first() == Some(&b'/') {
        return Ok((false, None, Cow::Borrowed(target)));
    }
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok((false, None, Cow::Borrowed(target)))
        } else {
            Err(EdgeError::BadRequest)
        };
    }
    let rest = strip_prefix_ignore_case(target, b"http://")
        .or_else(|| strip_prefix_ignore_case(target, b"https://"))
        .ok_or(EdgeError::BadRequest)?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // Userinfo is deprecated and a phishing device (RFC 9110 §4.2.4): treat it as an error.
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(EdgeError::BadRequest);
    }
    let path = match path.first() {
        None => Cow::Borrowed(&b"/"[..]),
        Some(b'?') => Cow::Owned([&b"/"[..], path].concat()),
        Some(_) => Cow::Borrowed(path),
    };
    // HTTP/2's `:path` never holds an authority: only HTTP/1 has the absolute form.
    if version == Version::Http2 {
        return Err(EdgeError::BadRequest);
    }
    Ok((true, Some(authority), path))
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// What a front end does with one header of a message it passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    Keep,
    Drop,
    /// Frames the message (`Connection`, `Transfer-Encoding`, `Content-Length`, `Upgrade`,
    /// `Host`): the front end that frames it writes these itself.
    Framing,
}

fn is_framing(name: &[u8]) -> bool {
    [
        "connection",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "host",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// The size of an HTTP/2 request head, for `limits.headers`: its target as written (scheme,
/// authority, path and query) and each field with its separators — as `uri.to_string()` plus
/// the fields would measure it, without building the string.
pub fn h2_head_size(uri: &http::Uri, headers: &http::HeaderMap) -> usize {
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1);
    target
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Whether a request header reaches the app.
pub fn request_header(name: &[u8], connection: &ConnectionHeaders<'_>) -> Forward {
    if is_framing(name) {
        Forward::Framing
    } else if HOP_BY_HOP
        .iter()
        .chain(CLIENT_CLAIMS)
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        || (name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-"))
        || connection.names(name)
    {
        Forward::Drop
    } else {
        Forward::Keep
    }
}

/// Whether an answer's header reaches the client. The app's `X-Request-Id` is replaced by the
/// request's.
pub fn response_header(name: &[u8], connection: &ConnectionHeaders<'_>) -> Forward {
    if is_framing(name) && !name.eq_ignore_ascii_case(b"host") {
        Forward::Framing
    } else if HOP_BY_HOP
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        || name.eq_ignore_ascii_case(b"x-request-id")
        || connection.names(name)
    {
        Forward::Drop
    } else {
        Forward::Keep
    }
}

/// The security headers an app's answers get when the app did not set them (HSTS over HTTPS
/// only, for names with a trusted certificate).
pub fn security_headers(
    policy: &EdgePolicy,
    hsts: bool,
) -> impl Iterator<Item = (&'static str, &str)> + Clone {
    let sec = &policy.security_headers;
    [
        (
            "strict-transport-security",
            sec.hsts.as_deref().filter(|_| hsts),
        ),
        (
            "x-content-type-options",
            sec.content_type_options.as_deref(),
        ),
        ("referrer-policy", sec.referrer_policy.as_deref()),
        ("x-frame-options", sec.frame_options.as_deref()),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
}

/// An answer the edge will not pass on (502): its framing is ambiguous or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes (no length given): the client's connection closes after it.
    UntilClose,
}

/// What an answer head says about its framing.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFacts<'a> {
    /// 1xx other than 101: passed on as it is; the final answer follows.
    pub interim: bool,
    pub body: ResponseBody,
    /// The upstream connection can carry another request once this answer is read whole (its
    /// head and framing give no reason to doubt where it ends).
    pub reusable: bool,
    pub connection: ConnectionHeaders<'a>,
}

/// Reads an answer head. `upgrade_asked`: the request asked to switch protocols (only then is
/// a 101 an answer).
pub fn read_response<'a, I>(
    status: u16,
    version: Version,
    head_request: bool,
    upgrade_asked: bool,
    headers: I,
) -> Result<ResponseFacts<'a>, BadResponse>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut facts = ResponseFacts {
        interim: false,
        body: ResponseBody::None,
        reusable: version != Version::Http10,
        connection: ConnectionHeaders::default(),
    };
    if status == 101 && !upgrade_asked {
        return Err(BadResponse("101 Switching Protocols without an upgrade"));
    }
    if !(100..=599).contains(&status) {
        return Err(BadResponse("a status code out of range"));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(BadResponse("more than one Content-Length"));
            }
            length = Some(parse_length(value).ok_or(BadResponse("an unreadable Content-Length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse("a transfer coding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            facts
                .connection
                .push_value(value)
                .map_err(|_| BadResponse("too many Connection headers"))?;
        }
    }
    if (100..200).contains(&status) && status != 101 {
        facts.interim = true;
        return Ok(facts);
    }
    if chunked && length.is_some() {
        // RFC 9112 §6.3: a smuggling or splitting shape, "ought to be handled as an error".
        return Err(BadResponse("both Content-Length and Transfer-Encoding"));
    }
    if chunked && version == Version::Http10 {
        return Err(BadResponse("Transfer-Encoding in an HTTP/1.0 answer"));
    }
    if facts.connection.has(b"close") {
        facts.reusable = false;
    } else if version == Version::Http10 && facts.connection.has(b"keep-alive") {
        facts.reusable = true;
    }
    let bodiless = head_request || status == 204 || status == 304 || status == 101;
    facts.body = if bodiless {
        // A 204 that announces a body, or a 304 that would chunk one, may well send it: the
        // connection cannot be trusted to start with the next answer.
        if (status == 204 && (chunked || length.is_some_and(|n| n > 0)))
            || (status == 304 && chunked)
        {
            facts.reusable = false;
        }
        ResponseBody::None
    } else if chunked {
        ResponseBody::Chunked
    } else if let Some(n) = length {
        ResponseBody::Length(n)
    } else {
        facts.reusable = false;
        ResponseBody::UntilClose
    };
    Ok(facts)
}

/// A Content-Length value: digits only (no sign, list or spaces inside), at most 19 of them.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Where to send a request again whose exchange failed before any byte of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
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
/// (Before any byte went out — a failed connect — any request moves on to the next upstream.)
pub fn retry_after(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_head_size_measures_what_to_string_would() {
        let mut headers = http::HeaderMap::new();
        headers.insert("accept", http::HeaderValue::from_static("*/*"));
        headers.append("cookie", http::HeaderValue::from_static("a=1"));
        for uri in [
            "https://app.test/a/b?x=1&y",
            "http://app.test:8080/",
            "/only/a/path",
            "/?",
            "*",
            "https://app.test",
        ] {
            let uri: http::Uri = uri.parse().expect(uri);
            let fields: usize = headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum();
            assert_eq!(
                h2_head_size(&uri, &headers),
                uri.to_string().len() + fields,
                "{uri}"
            );
        }
    }

    fn req<'a>(
        method: &str,
        target: &'a str,
        headers: &'a [(&'a str, &'a str)],
    ) -> Result<RequestFacts<'a>, EdgeError> {
        read_request(
            method.as_bytes(),
            target.as_bytes(),
            Version::Http11,
            headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        )
    }

    #[test]
    fn the_target_authority_wins_over_host() {
        let f = req("GET", "http://site.test/x?y", &[("Host", "site.test")]).expect("valid");
        assert_eq!(f.authority, b"site.test");
        assert!(f.from_target);
        assert_eq!(&*f.path, b"/x?y");
        let f = req("GET", "HTTP://Site.Test", &[("Host", "Site.Test")]).expect("valid");
        assert_eq!(f.host().as_deref(), Some("site.test"));
        assert_eq!(&*f.path, b"/");
        let f = req("GET", "http://a.test?q#frag", &[("Host", "a.test")]).expect("valid");
        assert_eq!(&*f.path, b"/?q");
        let f = req("GET", "/p#frag", &[("Host", "a.test")]).expect("valid");
        assert_eq!(&*f.path, b"/p");
        // Two hosts named: refused, never routed by either.
        for host in ["app.test", "site.test:80", "SITE.test"] {
            assert_eq!(
                req("GET", "http://site.test/x", &[("Host", host)]).map(|_| ()),
                Err(EdgeError::BadRequest),
                "{host}"
            );
        }
        for bad in [
            "http://user@app.test/",
            "http://evil.example@app.test/",
            "http:///x",
            "ftp://app.test/",
            "app.test:80",
            "x",
        ] {
            assert_eq!(
                req("GET", bad, &[("Host", "app.test")]).map(|_| ()),
                Err(EdgeError::BadRequest),
                "{bad}"
            );
        }
        // HTTP/1.1 needs a Host even with an absolute target.
        assert_eq!(
            req("GET", "http://a.test/", &[]).map(|_| ()),
            Err(EdgeError::NoHost)
        );
        assert!(req("OPTIONS", "*", &[("Host", "a")]).is_ok());
        assert!(req("GET", "*", &[("Host", "a")]).is_err());
    }

    #[test]
    fn framing_is_one_plain_length_or_chunked_alone() {
        let ok = req("POST", "/", &[("Host", "a"), ("Content-Length", " 5 ")]).expect("valid");
        assert_eq!(ok.body, RequestBody::Length(5));
        let ok = req(
            "POST",
            "/",
            &[("Host", "a"), ("Transfer-Encoding", "Chunked")],
        )
        .expect("ok");
        assert_eq!(ok.body, RequestBody::Chunked);
        for bad in [
            &[("Content-Length", "5, 5")][..],
            &[("Content-Length", "5"), ("Content-Length", "5")],
            &[("Content-Length", "+5")],
            &[("Content-Length", "")],
            &[("Content-Length", "0x5")],
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "")],
            &[("Transfer-Encoding", "gzip, chunked")],
            &[("Transfer-Encoding", "chunked, identity")],
            &[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
            &[("Transfer-Encoding", "identity")],
        ] {
            let mut headers = vec![("Host", "a")];
            headers.extend_from_slice(bad);
            assert_eq!(
                req("POST", "/", &headers).map(|_| ()),
                Err(EdgeError::BadRequest),
                "{bad:?}"
            );
        }
        assert_eq!(
            req("GET", "/", &[("Host", "a"), ("Host", "b")]).map(|_| ()),
            Err(EdgeError::BadRequest)
        );
        for named in ["host", "Content-Length", "transfer-encoding"] {
            assert_eq!(
                req(
                    "POST",
                    "/",
                    &[
                        ("Host", "a"),
                        ("Content-Length", "1"),
                        ("Connection", named)
                    ]
                )
                .map(|_| ()),
                Err(EdgeError::BadRequest),
                "{named}"
            );
        }
        assert_eq!(
            req("GET", "/", &[("Host", " ")]).map(|_| ()),
            Err(EdgeError::NoHost)
        );
    }

    #[test]
    fn clients_cannot_speak_for_the_edge() {
        let none = ConnectionHeaders::default();
        for name in [
            "Forwarded",
            "X-Real-IP",
            "X-Forwarded-For",
            "x-forwarded-port",
            "X-Forwarded-Prefix",
            "X-Request-Id",
            "Keep-Alive",
            "TE",
        ] {
            assert_eq!(
                request_header(name.as_bytes(), &none),
                Forward::Drop,
                "{name}"
            );
        }
        assert_eq!(request_header(b"x-forwarded", &none), Forward::Keep);
        assert_eq!(request_header(b"Content-Length", &none), Forward::Framing);
        let f = req(
            "GET",
            "/",
            &[("Host", "a"), ("Connection", "x-secret, close")],
        )
        .expect("valid");
        assert_eq!(request_header(b"X-Secret", &f.connection), Forward::Drop);
        assert!(f.close);
        assert_eq!(request_header(b"Proxy-Authorization", &none), Forward::Drop);
    }

    fn resp(
        status: u16,
        head: bool,
        headers: &[(&'static str, &'static str)],
    ) -> Result<ResponseFacts<'static>, BadResponse> {
        read_response(
            status,
            Version::Http11,
            head,
            false,
            headers
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn answers_are_framed_or_refused() {
        let r = resp(200, false, &[("Content-Length", "5")]).expect("ok");
        assert_eq!((r.body, r.reusable), (ResponseBody::Length(5), true));
        let r = resp(200, false, &[]).expect("ok");
        assert_eq!((r.body, r.reusable), (ResponseBody::UntilClose, false));
        let r = resp(200, false, &[("Transfer-Encoding", "chunked")]).expect("ok");
        assert_eq!(r.body, ResponseBody::Chunked);
        // A 204 announcing a body: no body, and the connection is not trusted again.
        let r = resp(204, false, &[("Content-Length", "5")]).expect("ok");
        assert_eq!((r.body, r.reusable), (ResponseBody::None, false));
        let r = resp(304, false, &[("Content-Length", "5")]).expect("ok");
        assert_eq!((r.body, r.reusable), (ResponseBody::None, true));
        let r = resp(200, true, &[("Content-Length", "5")]).expect("ok");
        assert_eq!((r.body, r.reusable), (ResponseBody::None, true));
        let r = resp(
            200,
            false,
            &[("Content-Length", "5"), ("Connection", "close")],
        )
        .expect("ok");
        assert!(!r.reusable);
        // A listed Content-Length still frames the answer.
        let r = resp(
            200,
            false,
            &[("Content-Length", "5"), ("Connection", "content-length")],
        )
        .expect("ok");
        assert_eq!(r.body, ResponseBody::Length(5));
        assert_eq!(
            response_header(b"Content-Length", &r.connection),
            Forward::Framing
        );
        for bad in [
            &[("Transfer-Encoding", "gzip"), ("Content-Length", "5")][..],
            &[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "identity"),
            ],
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
            &[("Content-Length", "5, 5")],
            &[("Content-Length", "5"), ("Content-Length", "5")],
        ] {
            assert!(resp(200, false, bad).is_err(), "{bad:?}");
        }
        assert!(resp(101, false, &[]).is_err());
        assert!(resp(103, false, &[]).expect("interim").interim);
    }

    #[test]
    fn only_idempotent_bodiless_requests_are_sent_twice() {
        let mut left = 1;
        assert_eq!(retry_after(true, true, &mut left, 0, 1), Retry::Fresh);
        assert_eq!(retry_after(true, true, &mut left, 0, 1), Retry::No);
        let mut left = 1;
        assert_eq!(retry_after(false, true, &mut left, 0, 2), Retry::Next);
        assert_eq!(retry_after(true, false, &mut left, 0, 2), Retry::No);
        let f = req("GET", "/", &[("Host", "a")]).expect("ok");
        assert!(f.replayable(b"GET"));
        assert!(!f.replayable(b"POST"));
        let f = req("DELETE", "/", &[("Host", "a"), ("Content-Length", "1")]).expect("ok");
        assert!(!f.replayable(b"DELETE"));
    }
}
