//! The web dashboard, served by the admin listener at `/` and `/ui/…`: server-rendered HTML and
//! one small script, all embedded in the binary. It is a client of the same data and handlers
//! as the API: reads come from the store and the supervisor as `reads.rs` shows them, changes go
//! through the handlers of `apps.rs`, and every change is appended to the audit log.
//!
//! Sign-in exchanges the admin token for a session cookie (`session.rs`); every POST carries the
//! session's CSRF token and, when the browser says where it comes from, the same origin. Without
//! a token the dashboard, like the API, is for loopback clients only, and it also wants a
//! loopback `Host` (so that a web page cannot reach it through DNS rebinding).

mod app;
mod builds;
mod certs;
mod html;
mod live;
mod pages;
mod session;
mod traffic;

pub(crate) use session::Sessions;
pub(crate) use traffic::Traffic;

use crate::Ctx;
use crate::audit::Entry;
use crate::problem::Problem;
use crate::router::{Req, Resp, full};
use html::Esc;
use http::request::Parts;
use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;
use session::Session;
use std::net::SocketAddr;
use std::sync::Arc;

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");
/// Form bodies larger than this are refused (they hold a token and a few fields).
const MAX_FORM: usize = 8 << 10;

/// What the browser may do with our pages: our own scripts, styles and connections only; no
/// inline script, no frames, forms posting only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether a path is the dashboard's: `/`, `/ui` and everything under `/ui/`.
pub(crate) fn owns(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// Answers one dashboard request; never fails (errors are pages).
pub(crate) async fn handle(ctx: Arc<Ctx>, req: Req, peer: SocketAddr) -> Resp {
    let mut resp = route(&ctx, req, peer).await;
    ctx.metrics.count("dashboard", resp.status().as_u16());
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, http::HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
    }
    resp
}

/// One request, taken apart: what it asks, and who asks.
struct Asked<'a> {
    ctx: &'a Arc<Ctx>,
    parts: Parts,
    /// Taken by the handler that reads it.
    body: Option<Incoming>,
    peer: SocketAddr,
}

async fn route(ctx: &Arc<Ctx>, req: Req, peer: SocketAddr) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let method = parts.method.clone();
    if ctx.token.is_none()
        && !(peer.ip().is_loopback() && crate::auth::loopback_host(&parts.headers))
    {
        return error_page(
            StatusCode::FORBIDDEN,
            "Not from here",
            "No admin token is set, so the dashboard answers only on a loopback address (open it as http://127.0.0.1:<port>/). Set the token to use it from elsewhere.",
            None,
        );
    }
    let a = Asked {
        ctx,
        parts,
        body: Some(body),
        peer,
    };
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, [""] | ["ui"]) => return redirect("/ui/", &[]),
        (&Method::GET, ["ui", "static", "style.css"]) => {
            return asset(STYLE, "text/css; charset=utf-8");
        }
        (&Method::GET, ["ui", "static", "app.js"]) => {
            return asset(SCRIPT, "text/javascript; charset=utf-8");
        }
        (&Method::GET, ["ui", "login"]) => return pages::sign_in_page(a, None).await,
        (&Method::POST, ["ui", "login"]) => return pages::sign_in(a).await,
        _ => {}
    }
    let signed_in = session::cookie(&a.parts.headers, session::COOKIE)
        .and_then(|id| Some((id.to_string(), ctx.sessions.get(id)?)));
    let Some((id, session)) = signed_in else {
        return if method == Method::GET {
            redirect("/ui/login", &[])
        } else {
            error_page(
                StatusCode::FORBIDDEN,
                "Sign in first",
                "This needs a signed-in session: sign in again.",
                Some("/ui/login"),
            )
        };
    };
    match (&method, segs.as_slice()) {
        (&Method::GET, ["ui", ""]) => pages::overview(a, &session).await,
        (&Method::POST, ["ui", "logout"]) => pages::sign_out(a, &id, &session).await,
        (&Method::GET, ["ui", "apps", app]) => app::page(a, &session, app).await,
        (&Method::GET, ["ui", "apps", app, "logs"]) => app::log(a, app).await,
        (&Method::GET, ["ui", "events"]) => live::events(a).await,
        (&Method::GET, ["ui", "certs"]) => certs::page(a, &session).await,
        (&Method::GET, ["ui", "deploy"]) => live::deploy_page(a, &session).await,
        (&Method::GET, ["ui", "builds", id]) => builds::page(a, &session, id).await,
        (&Method::GET, ["ui", "builds", id, "log"]) => live::build_log(a, id).await,
        (&Method::POST, ["ui", "apps", app, "deploy"]) => live::deploy(a, &session, app).await,
        (&Method::POST, ["ui", "apps", app, action]) => app::change(a, &session, app, action).await,
        (&Method::GET | &Method::POST, _) => error_page(
            StatusCode::NOT_FOUND,
            "No such page",
            &format!("There is no page {}.", shown(&path)),
            Some("/ui/"),
        ),
        _ => error_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "The dashboard takes GET and POST only.",
            Some("/ui/"),
        ),
    }
}

/// A path for a page or a log line: a client chooses its length.
fn shown(path: &str) -> &str {
    let mut cut = path.len().min(200);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    &path[..cut]
}

impl Asked<'_> {
    fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// Records a change in the audit log, as the API's changes are.
    fn audit(&self, caller: Option<&str>, app: Option<&str>, status: StatusCode, result: &str) {
        self.ctx.audit.record(&Entry {
            token: caller.unwrap_or("unauthenticated"),
            client: self.peer.ip(),
            method: self.parts.method.as_str(),
            path: shown(self.parts.uri.path()),
            app,
            status: status.as_u16(),
            result,
            unauthenticated: caller.is_none(),
        });
    }

    /// Whether the browser says the request comes from another site: `Sec-Fetch-Site` when it
    /// sends one (every current browser does), else `Origin` when there is one.
    fn cross_site(&self) -> bool {
        let h = &self.parts.headers;
        if let Some(site) = h.get("sec-fetch-site") {
            return !matches!(site.as_bytes(), b"same-origin" | b"none");
        }
        let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        bare != Some(host)
    }

    /// Reads an `application/x-www-form-urlencoded` body (once; then it is empty).
    async fn form(&mut self) -> Result<Form, Resp> {
        let Some(mut body) = self.body.take() else {
            return Ok(Form::default());
        };
        let media = self
            .parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if media != "application/x-www-form-urlencoded" {
            crate::router::drain(&mut body).await;
            return Err(error_page(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Not a form",
                "Send this form from the dashboard's page.",
                Some("/ui/"),
            ));
        }
        // read_body wants a request: its length, and the body.
        let mut req = Request::new(body);
        if let Some(len) = self.parts.headers.get(header::CONTENT_LENGTH) {
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, len.clone());
        }
        match crate::router::read_body(req, MAX_FORM).await {
            Ok(b) => Ok(Form::parse(&b)),
            Err(p) => Err(problem_page(p, Some("/ui/"))),
        }
    }
}

/// A parsed form: name/value pairs, percent- and `+`-decoded.
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        let text = String::from_utf8_lossy(body);
        Form(
            text.split('&')
                .filter(|p| !p.is_empty())
                .take(32)
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            // Two hex digits exactly (`from_str_radix` alone would take `%+1`).
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            b'%' => out.push(b'%'),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `given` is the session's CSRF token.
fn csrf_ok(session: &Session, given: Option<&str>) -> bool {
    given.is_some_and(|g| session::same(g, &session.csrf))
}

fn asset(text: &'static str, content_type: &str) -> Resp {
    let mut resp = full(StatusCode::OK, content_type, text);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}

/// A page.
fn html(status: StatusCode, body: String) -> Resp {
    full(status, "text/html; charset=utf-8", body)
}

/// `303 See Other` to `to`, setting `cookies`.
fn redirect(to: &str, cookies: &[String]) -> Resp {
    let mut resp = full(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    let h = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = http::HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// A page that says what went wrong, with a way back.
fn error_page(status: StatusCode, title: &str, detail: &str, back: Option<&str>) -> Resp {
    let back = back
        .map(|b| format!("<p><a href=\"{}\">Back</a></p>", Esc(b)))
        .unwrap_or_default();
    let main = format!(
        "<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p>{back}",
        Esc(title),
        Esc(detail)
    );
    html(
        status,
        html::page(
            &html::Frame {
                title,
                csrf: None,
                nav: html::Nav::None,
            },
            &main,
        ),
    )
}

fn problem_page(p: Problem, back: Option<&str>) -> Resp {
    let title = p.status.canonical_reason().unwrap_or("Error");
    let mut resp = error_page(p.status, title, &p.detail, back);
    for (name, value) in p.headers {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parts(host: &str) -> Parts {
        let (parts, ()) = Request::builder()
            .header(header::HOST, host)
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[test]
    fn only_loopback_hosts_without_a_token() {
        for ok in [
            "127.0.0.1:9000",
            "localhost:9000",
            "LOCALHOST",
            "[::1]:9000",
            "127.1.2.3",
        ] {
            assert!(crate::auth::loopback_host(&parts(ok).headers), "{ok}");
        }
        for bad in [
            "evil.example:9000",
            "localhost.evil.example",
            "10.0.0.1:9000",
            "[2001:db8::1]:9000",
            "",
        ] {
            assert!(!crate::auth::loopback_host(&parts(bad).headers), "{bad}");
        }
    }

    #[test]
    fn forms_decode() {
        let f = Form::parse(b"csrf=ab%2Bc&token=a+b%20c&bad=%zz%&empty=&release=3");
        assert_eq!(f.get("csrf"), Some("ab+c"));
        assert_eq!(f.get("token"), Some("a b c"));
        assert_eq!(f.get("bad"), Some("%zz%"));
        assert_eq!(f.get("empty"), Some(""));
        assert_eq!(f.get("release"), Some("3"));
        assert_eq!(f.get("missing"), None);
        // Signs are no hex digits: `%+1` is no escape.
        assert_eq!(Form::parse(b"x=%+1&y=%-f").get("x"), Some("% 1"));
        assert_eq!(Form::parse(b"x=%+1&y=%-f").get("y"), Some("%-f"));
        assert!(owns("/") && owns("/ui") && owns("/ui/apps/x"));
        assert!(!owns("/api/v1/apps") && !owns("/uix") && !owns("/healthz"));
    }
}
