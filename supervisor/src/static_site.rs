//! The static file server static sites run as (`spinforge static-serve --root DIR`): a spinlet
//! like any other, started by the supervisor on `PORT`, answering in milliseconds.
//!
//! GET and HEAD only; `ETag` and `Last-Modified` with 304 answers; `Cache-Control` that lets
//! browsers keep fingerprinted assets for a year and revalidate HTML; precompressed `.br`/`.gz`
//! siblings sent to clients that accept them; `/about` finds `about.html`; optional SPA fallback
//! to `/index.html`; `404.html` when present. Paths are decoded and checked segment by segment,
//! and resolved files must stay inside the root (no `..`, no links out).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;

/// A client has this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections at most; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Files are streamed in chunks of this size.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("the site root {0} is not a folder")]
    Root(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Site {
    root: PathBuf,
    spa: bool,
}

type Body = BoxBody<Bytes, std::io::Error>;

/// Serves `root` on `addr` until the process is stopped.
pub async fn serve(root: &Path, addr: SocketAddr, spa: bool) -> Result<(), StaticError> {
    let root = root
        .canonicalize()
        .ok()
        .filter(|r| r.is_dir())
        .ok_or_else(|| StaticError::Root(root.display().to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StaticError::Bind { addr, source })?;
    tracing::info!(root = %root.display(), %addr, spa, "serving static files");
    let site = Arc::new(Site { root, spa });
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let site = site.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let site = site.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&site, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

async fn handle<B>(site: &Site, req: Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = req.method() == Method::HEAD;
    let Some(rel) = request_path(req.uri().path()) else {
        return plain(StatusCode::BAD_REQUEST, "bad path\n");
    };
    match find(site, &rel, req.uri().path().ends_with('/')) {
        Found::File(path) => send(site, &path, req.headers(), head, StatusCode::OK).await,
        Found::Redirect => {
            let mut location = format!("{}/", req.uri().path());
            if let Some(q) = req.uri().query() {
                location = format!("{location}?{q}");
            }
            let mut r = plain(StatusCode::MOVED_PERMANENTLY, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Found::Nothing => {
            let looks_like_page = rel
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| !n.contains('.') || n.ends_with(".html"));
            if site.spa && looks_like_page {
                if let Some(index) = inside(site, &site.root.join("index.html")) {
                    return send(site, &index, req.headers(), head, StatusCode::OK).await;
                }
            }
            if let Some(page) = inside(site, &site.root.join("404.html")) {
                return send(site, &page, req.headers(), head, StatusCode::NOT_FOUND).await;
            }
            plain(StatusCode::NOT_FOUND, "not found\n")
        }
    }
}

enum Found {
    File(PathBuf),
    /// A folder asked for without its trailing slash.
    Redirect,
    Nothing,
}

fn find(site: &Site, rel: &Path, slash: bool) -> Found {
    let path = site.root.join(rel);
    if path.is_dir() {
        if !slash && !rel.as_os_str().is_empty() {
            return Found::Redirect;
        }
        return inside(site, &path.join("index.html")).map_or(Found::Nothing, Found::File);
    }
    if let Some(p) = inside(site, &path) {
        return Found::File(p);
    }
    // `/about` → `about.html` (what static exports of Next and others produce).
    let mut html = path.into_os_string();
    html.push(".html");
    inside(site, Path::new(&html)).map_or(Found::Nothing, Found::File)
}

/// The file, if it exists, is a regular file and really lies inside the root (links resolved).
fn inside(site: &Site, path: &Path) -> Option<PathBuf> {
    let real = path.canonicalize().ok()?;
    (real.starts_with(&site.root) && real.is_file()).then_some(real)
}

/// The URL path as a relative file path: percent-decoded, every segment plain (no `..`, no
/// NUL, no backslash). `None` for anything else.
fn request_path(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for segment in path.split('/') {
        let decoded = percent_decode(segment)?;
        if decoded.is_empty() || decoded == "." {
            continue;
        }
        if decoded == ".." || decoded.contains(['\0', '\\', '/']) {
            return None;
        }
        let p = Path::new(&decoded);
        if !matches!(p.components().next(), Some(Component::Normal(_)))
            || p.components().count() != 1
        {
            return None;
        }
        out.push(decoded);
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn send(
    site: &Site,
    path: &Path,
    headers: &hyper::HeaderMap,
    head: bool,
    status: StatusCode,
) -> Response<Body> {
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let content_type = content_type(path);
    let compressible = content_type.starts_with("text/")
        || content_type.contains("javascript")
        || content_type.contains("json")
        || content_type.contains("svg")
        || content_type.contains("xml");
    // A precompressed sibling, if the client takes it.
    let mut chosen = (path.to_path_buf(), None);
    if compressible {
        for (enc, ext) in [("br", "br"), ("gzip", "gz")] {
            if accepts(accept, enc) {
                let mut p = path.as_os_str().to_owned();
                p.push(".");
                p.push(ext);
                if let Some(real) = inside(site, Path::new(&p)) {
                    chosen = (real, Some(enc));
                    break;
                }
            }
        }
    }
    let (file_path, encoding) = chosen;
    let Ok(meta) = tokio::fs::metadata(&file_path).await else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let mtime = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let etag = format!(
        "\"{:x}-{:x}{}\"",
        meta.len(),
        mtime.as_nanos(),
        encoding.map(|e| format!("-{e}")).unwrap_or_default()
    );
    let last_modified = httpdate::fmt_http_date(modified);
    let not_modified = status == StatusCode::OK
        && match headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            Some(tags) => tags
                .split(',')
                .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag),
            None => headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .is_some_and(|since| {
                    // HTTP dates have whole seconds.
                    mtime.as_secs()
                        <= since
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs()
                }),
        };
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::CACHE_CONTROL, cache_control(&site.root, path))
        .header(header::ACCEPT_RANGES, "none");
    if compressible {
        builder = builder.header(header::VARY, "Accept-Encoding");
    }
    if not_modified {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(empty())
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""));
    }
    builder = builder
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, meta.len());
    if let Some(enc) = encoding {
        builder = builder.header(header::CONTENT_ENCODING, enc);
    }
    let body = if head {
        empty()
    } else {
        match tokio::fs::File::open(&file_path).await {
            Ok(file) => stream_file(file),
            Err(_) => return plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    };
    builder
        .body(body)
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

fn stream_file(file: tokio::fs::File) -> Body {
    let stream = futures::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

fn accepts(header: &str, encoding: &str) -> bool {
    header.split(',').any(|part| {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim();
        let refused = it.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        name.eq_ignore_ascii_case(encoding) && !refused
    })
}

/// HTML is revalidated every time; fingerprinted assets (`name.<hash>.ext`, or anything under an
/// `assets/` or `_next/static/` folder) are kept for a year; the rest for a few minutes.
fn cache_control(root: &Path, path: &Path) -> &'static str {
    let rel = path.strip_prefix(root).unwrap_or(path).to_string_lossy();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".html") {
        return "no-cache";
    }
    let fingerprinted = rel.starts_with("assets/")
        || rel.starts_with("_next/static/")
        || name.split(['.', '-']).any(|part| {
            part.len() >= 8
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && part.chars().any(|c| c.is_ascii_digit())
        });
    if fingerprinted {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    }
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths() {
        assert_eq!(request_path("/a/b.html"), Some(PathBuf::from("a/b.html")));
        assert_eq!(request_path("/a//./b"), Some(PathBuf::from("a/b")));
        assert_eq!(request_path("/"), Some(PathBuf::new()));
        assert_eq!(request_path("/a%20b"), Some(PathBuf::from("a b")));
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/%2e%2e/x",
            "/%2e%2e",
            "/a%2fb",
            "/a%00",
            "/a\\..\\b",
            "/%zz",
        ] {
            assert_eq!(request_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_rules() {
        let root = Path::new("/r");
        assert_eq!(cache_control(root, Path::new("/r/index.html")), "no-cache");
        assert_eq!(
            cache_control(root, Path::new("/r/assets/index-BXk2a9f1.js")),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            cache_control(root, Path::new("/r/app.3f9a8b7c21.css")),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            cache_control(root, Path::new("/r/style.css")),
            "public, max-age=300"
        );
        assert!(accepts("gzip, br;q=1", "br"));
        assert!(!accepts("gzip, br;q=0", "br"));
    }
}
