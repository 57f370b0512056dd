//! Plain-HTTP duties of automatic HTTPS, answered before routing: ACME HTTP-01 tokens at
//! `/.well-known/acme-challenge/{token}` (from the edge's in-memory copy, never a store call), and
//! the 308 redirect to HTTPS for names that have a trusted certificate. HTTPS answers for such
//! names carry HSTS.

use crate::routing::normalize_host;
use crate::tls::TlsState;
use bytes::Bytes;
use http::header;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// `Strict-Transport-Security` sent on HTTPS answers for names with a trusted certificate.
pub const HSTS: &str = "max-age=31536000";

/// Whether the request came in over TLS.
pub fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Whether a plain-HTTP request is ours to answer: an ACME token (`acme`, as the request policy
/// read the target), or a redirect to HTTPS. `host` is the normalized host it is for.
pub fn wants(tls: &TlsState, session: &Session, host: &str, acme: bool) -> bool {
    !is_tls(session) && (acme || tls.has_trusted_cert(host))
}

/// Answers a request [`wants`] took: the token's key authorization (or 404), or a 308 to HTTPS
/// with path and query kept. `path_and_query`: the target in origin form.
pub async fn answer(
    tls: &TlsState,
    session: &mut Session,
    host: &str,
    path_and_query: &[u8],
) -> Result<()> {
    let (status, body, location) = plain_answer(tls, host, path_and_query);
    respond(
        session,
        status,
        Some(body).filter(|b| !b.is_empty()),
        location,
    )
    .await
}

/// What [`answer`] says, for any front end: `(status, body, Location)`.
pub fn plain_answer(
    tls: &TlsState,
    host: &str,
    path_and_query: &[u8],
) -> (u16, String, Option<String>) {
    let path_and_query = String::from_utf8_lossy(path_and_query);
    let path = path_and_query.split('?').next().unwrap_or("");
    if let Some(token) = path.strip_prefix(CHALLENGE_PATH) {
        return match tls.http_challenge(token, host) {
            Some(answer) => {
                tracing::debug!(%host, "answered an HTTP-01 challenge");
                (200, answer, None)
            }
            None => (404, String::new(), None),
        };
    }
    let port = match tls.https_port() {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    (
        308,
        String::new(),
        Some(format!("https://{host}{port}{path_and_query}")),
    )
}

/// Whether an answer gets HSTS (the app's `security_headers.hsts`): over HTTPS, for a name with
/// a trusted certificate — never for a self-signed fallback, which would lock browsers out.
pub fn hsts_applies(tls: &TlsState, session: &Session) -> bool {
    if !is_tls(session) {
        return false;
    }
    let req = session.req_header();
    let raw = match req.headers.get(header::HOST) {
        Some(h) => h.as_bytes(),
        None => req.uri.host().map(str::as_bytes).unwrap_or_default(),
    };
    normalize_host(raw).is_some_and(|h| tls.has_trusted_cert(&h))
}

async fn respond(
    session: &mut Session,
    status: u16,
    body: Option<String>,
    location: Option<String>,
) -> Result<()> {
    let body = Bytes::from(body.unwrap_or_default());
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    if let Some(l) = location {
        resp.insert_header(header::LOCATION, l)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
