//! The static file server static sites run as (`spinforge static-serve --root DIR`): a spinlet
//! like any other, started by the supervisor on `PORT`, answering in milliseconds.
//!
//! GET and HEAD only; `ETag` and `Last-Modified` with 304 answers; `Cache-Control` that lets
//! browsers keep fingerprinted assets for a year and revalidate HTML; precompressed `.br`/`.gz`
//! siblings sent to clients that accept them; `/about` finds `about.html`; optional SPA fallback
//! to `/index.html`; `404.html` when present.
//!
//! What it serves, by construction: every file is opened through a handle on the root folder
//! with the kernel keeping the lookup beneath it (cap-std: `openat2` with `RESOLVE_BENEATH`), so
//! neither `..` nor a link leads out; a link inside the site that points inside is followed. A
//! path with a segment starting with `.` (`/.env`, `/.git/config`) is never served, except under
//! `/.well-known/`; nor are SpinForge's own files at the root (`release.json`, which the builder
//! writes beside a plain site's files, and `spinforge.yaml`), under any name that leads to them.
//! A folder's redirect names a path of this host only (`//docs` would name the host `docs`).

use bytes::Bytes;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
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
/// SpinForge's files that can lie at the root of a served folder (the release folder of a plain
/// site): build metadata, and the app's config with its env values (a deploy-folder app).
const PRIVATE: &[&str] = &["release.json", "spinforge.yaml", "spinforge.yml"];
/// The one dot-folder sites publish (RFC 8615: security.txt, app links, ACME via the site).
const WELL_KNOWN: &str = ".well-known";

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
    /// Every lookup starts here and stays beneath it.
    root: Dir,
    spa: bool,
    /// Device and inode of the root's [`PRIVATE`] files: another name for them (a link) is
    /// refused too.
    private: Vec<(u64, u64)>,
}

type Body = BoxBody<Bytes, std::io::Error>;

/// Serves `root` on `addr` until the process is stopped. A relative `root` (what the builder
/// passes) must lie beneath the working folder (the release), even through links.
pub async fn serve(root: &Path, addr: SocketAddr, spa: bool) -> Result<(), StaticError> {
    let base = Dir::open_ambient_dir(".", cap_std::ambient_authority())
        .map_err(|_| StaticError::Root(root.display().to_string()))?;
    let site =
        Site::open(&base, root, spa).map_err(|_| StaticError::Root(root.display().to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StaticError::Bind { addr, source })?;
    tracing::info!(root = %root.display(), %addr, spa, "serving static files");
    let site = Arc::new(site);
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
                async move { Ok::<_, std::convert::Infallible>(handle(site, req).await) }
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

/// What a lookup found, opened.
enum Entry {
    File(std::fs::File, std::fs::Metadata),
    Folder,
}

impl Site {
    /// The folder `root`: beneath `base` when relative, as given when absolute.
    fn open(base: &Dir, root: &Path, spa: bool) -> std::io::Result<Site> {
        let root = if root.is_absolute() {
            Dir::open_ambient_dir(root, cap_std::ambient_authority())?
        } else if root.as_os_str().is_empty() {
            base.open_dir(".")?
        } else {
            base.open_dir(root)?
        };
        let private = PRIVATE
            .iter()
            .filter_map(|name| root.metadata(name).ok())
            .filter(|m| m.is_file())
            .map(|m| {
                use cap_std::fs::MetadataExt as _;
                (m.dev(), m.ino())
            })
            .collect();
        Ok(Site { root, spa, private })
    }

    /// Opens `rel` (a path from [`request_path`]) beneath the root: a regular file or a folder
    /// that may be published, else `None`. Links are followed only while they stay inside.
    fn entry(&self, rel: &Path) -> Option<Entry> {
        if !publishable(rel) {
            return None;
        }
        let mut options = OpenOptions::new();
        // A FIFO planted by a build must not block the lookup: non-blocking changes nothing
        // for regular files.
        options.read(true).custom_flags(libc::O_NONBLOCK);
        let path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let file = self.root.open_with(path, &options).ok()?.into_std();
        let meta = file.metadata().ok()?;
        if meta.is_dir() {
            return Some(Entry::Folder);
        }
        let ours = self.private.contains(&(meta.dev(), meta.ino()));
        (meta.is_file() && !ours).then_some(Entry::File(file, meta))
    }

    fn file(&self, rel: &Path) -> Option<(std::fs::File, std::fs::Metadata)> {
        match self.entry(rel)? {
            Entry::File(f, m) => Some((f, m)),
            Entry::Folder => None,
        }
    }
}

/// Whether a request may name `rel` at all: no segment starting with `.` (but `.well-known` at
/// the top), none of SpinForge's files at the root.
fn publishable(rel: &Path) -> bool {
    let mut names = rel.components().map(|c| match c {
        Component::Normal(n) => n.to_str(),
        _ => None,
    });
    let Some(first) = names.next() else {
        return true; // the root itself
    };
    let Some(first) = first else { return false };
    if first.starts_with('.') && first != WELL_KNOWN {
        return false;
    }
    let mut rest = names.peekable();
    if rest.peek().is_none() && PRIVATE.iter().any(|p| p.eq_ignore_ascii_case(first)) {
        return false;
    }
    rest.all(|n| n.is_some_and(|n| !n.starts_with('.')))
}

/// A file to answer with.
struct Hit {
    file: std::fs::File,
    meta: std::fs::Metadata,
    /// The path asked for (content type and cache rules go by it, not by a `.br` sibling).
    rel: PathBuf,
    encoding: Option<&'static str>,
    status: StatusCode,
}

enum Found {
    Hit(Box<Hit>),
    /// A folder asked for without its trailing slash.
    Redirect,
    Nothing,
}

async fn handle<B>(site: Arc<Site>, req: Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = req.method() == Method::HEAD;
    let raw = req.uri().path();
    let Some(rel) = request_path(raw) else {
        return plain(StatusCode::BAD_REQUEST, "bad path\n");
    };
    let slash = raw.ends_with('/');
    let accept = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // File system calls block: off the runtime's threads.
    let found = tokio::task::spawn_blocking(move || lookup(&site, rel, slash, &accept)).await;
    match found {
        Ok(Found::Hit(hit)) => send(*hit, req.headers(), head),
        Ok(Found::Redirect) => {
            let mut location = folder_location(raw);
            if let Some(q) = req.uri().query() {
                location = format!("{location}?{q}");
            }
            let mut r = plain(StatusCode::MOVED_PERMANENTLY, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Ok(Found::Nothing) | Err(_) => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Where a folder asked for without its slash is: the path with empty and `.` segments left out,
/// so it starts with exactly one `/` (`//docs` → `/docs/`, never the host `docs`).
fn folder_location(raw: &str) -> String {
    let mut out = String::from("/");
    for segment in raw.split('/') {
        if segment.is_empty() || percent_decode(segment).is_some_and(|d| d == ".") {
            continue;
        }
        out.push_str(segment);
        out.push('/');
    }
    out
}

fn lookup(site: &Site, rel: PathBuf, slash: bool, accept: &str) -> Found {
    match find(site, &rel, slash, accept) {
        Found::Nothing => {}
        other => return other,
    }
    let looks_like_page = rel
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| !n.contains('.') || n.ends_with(".html"));
    if site.spa && looks_like_page {
        if let Some(hit) = hit(site, Path::new("index.html"), accept, StatusCode::OK) {
            return Found::Hit(hit);
        }
    }
    hit(site, Path::new("404.html"), accept, StatusCode::NOT_FOUND)
        .map_or(Found::Nothing, Found::Hit)
}

fn find(site: &Site, rel: &Path, slash: bool, accept: &str) -> Found {
    match site.entry(rel) {
        Some(Entry::Folder) => {
            if !slash && !rel.as_os_str().is_empty() {
                return Found::Redirect;
            }
            let index = rel.join("index.html");
            return hit(site, &index, accept, StatusCode::OK).map_or(Found::Nothing, Found::Hit);
        }
        Some(Entry::File(file, meta)) => {
            let mut hit = Hit {
                file,
                meta,
                rel: rel.to_path_buf(),
                encoding: None,
                status: StatusCode::OK,
            };
            with_sibling(site, &mut hit, accept);
            return Found::Hit(Box::new(hit));
        }
        None => {}
    }
    // `/about` → `about.html` (what static exports of Next and others produce).
    let mut html = rel.as_os_str().to_owned();
    html.push(".html");
    hit(site, Path::new(&html), accept, StatusCode::OK).map_or(Found::Nothing, Found::Hit)
}

/// `rel` as an answer, or its precompressed sibling when the client takes it.
fn hit(site: &Site, rel: &Path, accept: &str, status: StatusCode) -> Option<Box<Hit>> {
    let (file, meta) = site.file(rel)?;
    let mut hit = Box::new(Hit {
        file,
        meta,
        rel: rel.to_path_buf(),
        encoding: None,
        status,
    });
    with_sibling(site, &mut hit, accept);
    Some(hit)
}

/// Swaps in a precompressed sibling (`.br`, `.gz`) of a compressible file if the client takes it.
fn with_sibling(site: &Site, hit: &mut Hit, accept: &str) {
    if !compressible(content_type(&hit.rel)) {
        return;
    }
    for (enc, ext) in [("br", "br"), ("gzip", "gz")] {
        if accepts(accept, enc) {
            let mut p = hit.rel.as_os_str().to_owned();
            p.push(".");
            p.push(ext);
            if let Some((file, meta)) = site.file(Path::new(&p)) {
                hit.file = file;
                hit.meta = meta;
                hit.encoding = Some(enc);
                return;
            }
        }
    }
}

fn compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.contains("javascript")
        || content_type.contains("json")
        || content_type.contains("svg")
        || content_type.contains("xml")
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

fn send(hit: Hit, headers: &hyper::HeaderMap, head: bool) -> Response<Body> {
    let Hit {
        file,
        meta,
        rel,
        encoding,
        status,
    } = hit;
    let content_type = content_type(&rel);
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
        .header(header::CACHE_CONTROL, cache_control(&rel))
        .header(header::ACCEPT_RANGES, "none");
    if compressible(content_type) {
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
        stream_file(tokio::fs::File::from_std(file))
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
/// `assets/` or `_next/static/` folder) are kept for a year; the rest for a few minutes. `rel` is
/// the path beneath the root.
fn cache_control(rel: &Path) -> &'static str {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".html") {
        return "no-cache";
    }
    let fingerprinted = rel.starts_with("assets")
        || rel.starts_with("_next/static")
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
        assert_eq!(cache_control(Path::new("index.html")), "no-cache");
        assert_eq!(
            cache_control(Path::new("assets/index-BXk2a9f1.js")),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            cache_control(Path::new("app.3f9a8b7c21.css")),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(cache_control(Path::new("style.css")), "public, max-age=300");
        assert!(accepts("gzip, br;q=1", "br"));
        assert!(!accepts("gzip, br;q=0", "br"));
    }

    /// A site with the files a hostile build could leave, beside a secret outside it.
    fn hostile_site() -> (tempfile::TempDir, Arc<Site>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        let root = tmp.path().join("release");
        for d in [
            &outside,
            &root.join("docs"),
            &root.join(".well-known"),
            &root.join(".git"),
            &root.join("sub"),
        ] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let write = |p: &Path, t: &str| std::fs::write(p, t).expect("write");
        write(&outside.join("secret.txt"), "outside-secret");
        write(&root.join("index.html"), "home");
        write(&root.join("index.html.br"), "home-br");
        write(&root.join("docs/index.html"), "docs");
        write(&root.join("about.html"), "about");
        write(
            &root.join("release.json"),
            "{\"source\": \"release-secret\"}",
        );
        write(&root.join("spinforge.yaml"), "yaml-secret");
        write(&root.join("sub/release.json"), "the site's own");
        write(&root.join(".env"), "dotenv-secret");
        write(&root.join(".git/config"), "git-secret");
        write(&root.join(".well-known/security.txt"), "contact");
        write(&root.join(".well-known/.hidden"), "hidden-secret");
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).expect("symlink")
        };
        link("../outside/secret.txt", "up.txt");
        link(&outside.join("secret.txt").display().to_string(), "abs.txt");
        link("..", "parent");
        link("/", "slash");
        link("index.html", "inside.html");
        link("release.json", "meta.json");
        let fifo = std::process::Command::new("mkfifo")
            .arg(root.join("pipe"))
            .status()
            .expect("mkfifo");
        assert!(fifo.success());
        let base = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).expect("dir");
        let site = Site::open(&base, Path::new("release"), false).expect("site");
        (tmp, Arc::new(site))
    }

    async fn get(site: &Arc<Site>, path: &str, accept: &str) -> (u16, String, Option<String>) {
        let req = Request::get(path)
            .header(header::ACCEPT_ENCODING, accept)
            .body(())
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(5), handle(site.clone(), req))
            .await
            .expect("answers at once");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            String::from_utf8_lossy(&body).into_owned(),
            location,
        )
    }

    #[tokio::test]
    async fn serves_the_site_and_nothing_else() {
        let (_tmp, site) = hostile_site();
        for (path, body) in [
            ("/", "home"),
            ("/index.html", "home"),
            ("/docs/", "docs"),
            ("/about", "about"),
            ("/inside.html", "home"),
            ("/sub/release.json", "the site's own"),
            ("/.well-known/security.txt", "contact"),
        ] {
            let (status, got, _) = get(&site, path, "").await;
            assert_eq!((status, got.as_str()), (200, body), "{path}");
        }
        assert_eq!(get(&site, "/", "br").await.1, "home-br");
        for path in [
            "/release.json",
            "/Release.JSON",
            "/meta.json",
            "/spinforge.yaml",
            "/.env",
            "/%2eenv",
            "/.git/config",
            "/docs/.git/config",
            "/.well-known/.hidden",
            "/up.txt",
            "/abs.txt",
            "/parent/outside/secret.txt",
            "/slash/etc/passwd",
            "/pipe",
        ] {
            let (status, got, _) = get(&site, path, "").await;
            assert!(matches!(status, 400 | 404), "{path}: {status} {got}");
            assert!(!got.contains("secret"), "{path}: {got}");
        }
    }

    #[tokio::test]
    async fn folder_redirects_stay_on_this_host() {
        let (_tmp, site) = hostile_site();
        for (path, location) in [
            ("/docs", "/docs/"),
            ("//docs", "/docs/"),
            ("///docs?a=1", "/docs/?a=1"),
            ("/./docs", "/docs/"),
            ("/%2e//docs", "/docs/"),
        ] {
            let (status, _, got) = get(&site, path, "").await;
            assert_eq!((status, got.as_deref()), (301, Some(location)), "{path}");
        }
    }

    #[test]
    fn a_relative_root_stays_beneath_the_release() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("release/dist")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", tmp.path().join("release/public")).expect("symlink");
        let release =
            Dir::open_ambient_dir(tmp.path().join("release"), cap_std::ambient_authority())
                .expect("dir");
        assert!(Site::open(&release, Path::new("dist"), false).is_ok());
        assert!(Site::open(&release, Path::new("public"), false).is_err());
        assert!(Site::open(&release, Path::new("../release"), false).is_err());
    }
}
