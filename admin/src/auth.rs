//! The bearer token: kept only as a hash, compared in constant time, and named in logs by a
//! short id that cannot be turned back into the token.

/// The configured token.
pub(crate) struct Token {
    hash: [u8; 32],
    pub id: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id).finish()
    }
}

/// A token's id for the audit log: the start of a hash of it, never the token itself.
pub fn token_id(token: &str) -> String {
    let hash = blake3::derive_key("spinforge admin token id v1", token.as_bytes());
    hash[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Token {
    pub fn new(token: &str) -> Token {
        Token {
            hash: *blake3::hash(token.as_bytes()).as_bytes(),
            id: token_id(token),
        }
    }

    /// Whether `given` is the token. Both sides are hashed first, so the comparison takes the
    /// same time whatever the length or content of `given`.
    pub fn matches(&self, given: &str) -> bool {
        let given = blake3::hash(given.as_bytes());
        same_bytes(&self.hash, given.as_bytes())
    }
}

/// Constant-time equality of two byte strings (their lengths are not secret): tokens, CSRF
/// tokens, session keys.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// Who is asking, once the token checked out.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// The token matched: its id.
    Token(String),
    /// No token is configured (loopback only).
    Local,
}

impl Caller {
    pub fn id(&self) -> &str {
        match self {
            Caller::Token(id) => id,
            Caller::Local => "local",
        }
    }
}

/// Checks the `Authorization` header against `token`.
pub(crate) fn check(
    token: Option<&Token>,
    header: Option<&http::HeaderValue>,
) -> Result<Caller, &'static str> {
    let Some(token) = token else {
        return Ok(Caller::Local);
    };
    let Some(value) = header else {
        return Err("this endpoint needs `Authorization: Bearer <token>`");
    };
    let value = value.to_str().unwrap_or("");
    let Some(given) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err("the Authorization header must be `Bearer <token>`");
    };
    if token.matches(given.trim()) {
        Ok(Caller::Token(token.id.clone()))
    } else {
        Err("the token is not valid")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_token() {
        let t = Token::new("s3cret");
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cret "));
        assert!(!t.matches(""));
        assert!(!t.matches("s3cre"));
        assert_ne!(t.id, "s3cret");
        assert_eq!(t.id.len(), 12);
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn header_forms() {
        let t = Token::new("abc");
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert!(check(Some(&t), Some(&h("Bearer abc"))).is_ok());
        assert!(check(Some(&t), Some(&h("Bearer abd"))).is_err());
        assert!(check(Some(&t), Some(&h("Basic abc"))).is_err());
        assert!(check(Some(&t), None).is_err());
        assert!(check(None, None).is_ok());
    }
}

/// Whether the `Host` a request names is a loopback name or address.
pub(crate) fn loopback_host(headers: &http::HeaderMap) -> bool {
    let Some(host) = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Without a token the API trusts any loopback client — but a web page the user has open can
/// make the browser send requests to 127.0.0.1 too (a form POST to `…/stop` needs no CORS
/// preflight), and through DNS rebinding even read the answers. Such requests are refused: one
/// a browser marks as coming from another site (`Sec-Fetch-Site`, or an `Origin` header, which
/// the CLI and scripts do not send), one whose `Host` is not a loopback name, or one a proxy
/// forwarded.
pub(crate) fn refuse_browser_without_token(headers: &http::HeaderMap) -> Option<&'static str> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| !s.eq_ignore_ascii_case("none")) {
        return Some("without a token, the admin API does not answer requests a web page makes");
    }
    if headers.contains_key(http::header::ORIGIN) {
        return Some(
            "without a token, the admin API does not answer requests a web page makes (Origin)",
        );
    }
    if !loopback_host(headers) {
        return Some("without a token, the admin API answers only a loopback Host");
    }
    // A proxy on this machine (the edge itself, for an app whose upstream is this port) connects
    // from loopback on behalf of anyone, and passes their `Host: localhost` on.
    if headers.contains_key("x-forwarded-for") || headers.contains_key(http::header::FORWARDED) {
        return Some("without a token, the admin API does not answer requests a proxy forwards");
    }
    None
}

#[cfg(test)]
mod browser_tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn browsers_and_rebound_names_are_refused_without_a_token() {
        for ok in [
            &[("host", "127.0.0.1:9000")][..],
            &[("host", "localhost")],
            &[("host", "[::1]:9000")],
            &[("host", "127.0.0.1:9000"), ("sec-fetch-site", "none")],
        ] {
            assert_eq!(refuse_browser_without_token(&headers(ok)), None, "{ok:?}");
        }
        for bad in [
            &[("host", "127.0.0.1:9000"), ("sec-fetch-site", "cross-site")][..],
            &[("host", "127.0.0.1:9000"), ("sec-fetch-site", "same-site")],
            &[
                ("host", "127.0.0.1:9000"),
                ("origin", "https://evil.example"),
            ],
            &[("host", "evil.example:9000")],
            &[("host", "localhost"), ("x-forwarded-for", "203.0.113.7")],
            &[("host", "localhost"), ("forwarded", "for=203.0.113.7")],
            &[("host", "127.0.0.1.evil.example")],
            &[],
        ] {
            assert!(
                refuse_browser_without_token(&headers(bad)).is_some(),
                "{bad:?}"
            );
        }
    }
}
