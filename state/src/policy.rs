//! How the edge treats an app's requests: rate limits, size limits, compression and the security
//! headers it adds. Written by the supervisor into every `routes:{domain}` record, so that any edge
//! — and apps created through the admin API later — get it without reading the YAML.

use serde::{Deserialize, Serialize};

/// Per-app edge settings. Every field has a default, so an older route record (or a newer one
/// with fields this reader does not know) still reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgePolicy {
    /// `rate_limit`: none by default.
    pub rate_limit: Option<RateLimit>,
    /// `limits.body`: the largest request body, in bytes (413 above it).
    pub max_body_bytes: u64,
    /// `limits.headers`: the largest request head (request line and headers), in bytes (431).
    pub max_header_bytes: u64,
    /// `compression`: gzip, brotli or zstd for text responses when the client accepts one.
    pub compression: bool,
    pub security_headers: SecurityHeaders,
}

impl Default for EdgePolicy {
    fn default() -> Self {
        Self {
            rate_limit: None,
            max_body_bytes: 10 << 20,
            max_header_bytes: 32 << 10,
            compression: true,
            security_headers: SecurityHeaders::default(),
        }
    }
}

/// NGINX `limit_req` with `burst` and `nodelay`: each client IP may send `burst` requests at once
/// and `rps` a second after that; excess requests are rejected at once, never queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests per second per client IP.
    pub rps: f64,
    /// Requests a client may send at once above the rate.
    pub burst: u32,
    /// An optional cap for the whole app, all clients together.
    #[serde(default)]
    pub app_rps: Option<f64>,
    #[serde(default)]
    pub app_burst: Option<u32>,
    #[serde(default)]
    pub scope: RateLimitScope,
}

/// Where a rate limit's budget is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// Each edge counts on its own.
    #[default]
    Local,
    /// The edges share one budget through the state store.
    Cluster,
}

/// Response headers the edge adds when the app did not set them; `None` leaves one out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security`, sent on HTTPS responses only.
    pub hsts: Option<String>,
    /// `X-Content-Type-Options`.
    pub content_type_options: Option<String>,
    /// `Referrer-Policy`.
    pub referrer_policy: Option<String>,
    /// `X-Frame-Options`.
    pub frame_options: Option<String>,
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        Self {
            hsts: Some("max-age=31536000".into()),
            content_type_options: Some("nosniff".into()),
            referrer_policy: Some("strict-origin-when-cross-origin".into()),
            frame_options: None,
        }
    }
}

impl SecurityHeaders {
    /// No headers added at all (`security_headers: off`).
    pub fn none() -> Self {
        Self {
            hsts: None,
            content_type_options: None,
            referrer_policy: None,
            frame_options: None,
        }
    }
}
