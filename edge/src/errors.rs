//! The edge's own answers (404, 429, 502, 503, …): HTML for browsers, JSON for API clients (by
//! Accept), each naming the request id so that a user's report can be found in the logs.

use bytes::Bytes;
use http::header;
use pingora_http::ResponseHeader;
use std::time::Duration;

/// An answer the edge gives itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeError {
    /// Malformed or ambiguous framing (request smuggling shapes).
    BadRequest,
    NoHost,
    UnknownHost,
    HeadersTooLarge,
    BodyTooLarge,
    RateLimited {
        retry_after: Duration,
    },
    BadGateway,
    /// An external upstream (`upstream:`) with no healthy address.
    UpstreamUnhealthy,
    Unavailable {
        retry_after: Duration,
    },
    GatewayTimeout,
}

impl EdgeError {
    pub fn status(self) -> u16 {
        match self {
            EdgeError::BadRequest | EdgeError::NoHost => 400,
            EdgeError::UnknownHost => 404,
            EdgeError::BodyTooLarge => 413,
            EdgeError::HeadersTooLarge => 431,
            EdgeError::RateLimited { .. } => 429,
            EdgeError::BadGateway | EdgeError::UpstreamUnhealthy => 502,
            EdgeError::Unavailable { .. } => 503,
            EdgeError::GatewayTimeout => 504,
        }
    }

    fn title(self) -> &'static str {
        match self {
            EdgeError::BadRequest | EdgeError::NoHost => "Bad Request",
            EdgeError::UnknownHost => "Not Found",
            EdgeError::BodyTooLarge => "Content Too Large",
            EdgeError::HeadersTooLarge => "Request Header Fields Too Large",
            EdgeError::RateLimited { .. } => "Too Many Requests",
            EdgeError::BadGateway | EdgeError::UpstreamUnhealthy => "Bad Gateway",
            EdgeError::Unavailable { .. } => "Service Unavailable",
            EdgeError::GatewayTimeout => "Gateway Timeout",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            EdgeError::BadRequest => "The request is malformed or its length is ambiguous.",
            EdgeError::NoHost => "The request has no Host header.",
            EdgeError::UnknownHost => "No app is served on this host.",
            EdgeError::BodyTooLarge => "The request body is larger than this app accepts.",
            EdgeError::HeadersTooLarge => "The request headers are larger than this app accepts.",
            EdgeError::RateLimited { .. } => "Too many requests from your address; slow down.",
            EdgeError::BadGateway => "The app failed to answer this request.",
            EdgeError::UpstreamUnhealthy => "The app's upstream is failing its health check.",
            EdgeError::Unavailable { .. } => {
                "The app is starting or unavailable; try again shortly."
            }
            EdgeError::GatewayTimeout => "The app took too long to answer.",
        }
    }

    fn retry_after(self) -> Option<Duration> {
        match self {
            EdgeError::RateLimited { retry_after } | EdgeError::Unavailable { retry_after } => {
                Some(retry_after)
            }
            _ => None,
        }
    }

    /// The response head and body for a client that sent `accept`.
    pub fn render(
        self,
        accept: Option<&[u8]>,
        request_id: &str,
    ) -> pingora_error::Result<(ResponseHeader, Bytes)> {
        let status = self.status();
        let (content_type, body) = if wants_json(accept) {
            let body = serde_json::json!({
                "status": status,
                "title": self.title(),
                "detail": self.detail(),
                "request_id": request_id,
            });
            ("application/problem+json", format!("{body}\n"))
        } else {
            let body = format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status} {title}</title>\
                 <style>body{{font:16px system-ui,sans-serif;margin:4em auto;max-width:36em;color:#222}}\
                 small{{color:#777}}</style></head>\n<body><h1>{status} {title}</h1>\n<p>{detail}</p>\n\
                 <p><small>request id {id}</small></p></body></html>\n",
                title = self.title(),
                detail = self.detail(),
                id = html_escape(request_id),
            );
            ("text/html; charset=utf-8", body)
        };
        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up, at least 1.
            let secs = wait.as_millis().div_ceil(1000).max(1);
            resp.insert_header(header::RETRY_AFTER, secs.to_string())?;
        }
        Ok((resp, Bytes::from(body)))
    }
}

/// JSON when the client prefers it to HTML: `application/json` or any `+json` type with a
/// q-value at least that of `text/html`.
pub fn wants_json(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return false;
    };
    let mut json_q = 0.0f32;
    let mut html_q = 0.0f32;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let ty = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if ty == "application/json" || ty.ends_with("+json") {
            json_q = json_q.max(q);
        } else if ty == "text/html" {
            html_q = html_q.max(q);
        }
    }
    json_q > 0.0 && json_q >= html_q
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_by_accept() {
        assert!(wants_json(Some(b"application/json")));
        assert!(wants_json(Some(
            b"application/problem+json, text/html;q=0.5"
        )));
        assert!(!wants_json(Some(
            b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_json(Some(b"*/*")));
        assert!(!wants_json(None));
    }

    #[test]
    fn pages_carry_status_and_request_id() {
        let (head, body) = EdgeError::RateLimited {
            retry_after: Duration::from_millis(1200),
        }
        .render(Some(b"application/json"), "abc123")
        .expect("render");
        assert_eq!(head.status.as_u16(), 429);
        assert_eq!(head.headers.get("retry-after").expect("retry-after"), "2");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["request_id"], "abc123");
        assert_eq!(v["status"], 429);
        let (head, body) = EdgeError::UnknownHost.render(None, "<x>").expect("render");
        assert_eq!(head.status.as_u16(), 404);
        let html = String::from_utf8(body.to_vec()).expect("utf8");
        assert!(html.contains("404 Not Found") && html.contains("&lt;x&gt;"));
    }
}
