//! Which handler answers a request, the token check, and what every answer passes through on
//! its way out (the request counter, the audit log).

use crate::auth::{self, Caller};
use crate::problem::Problem;
use crate::{Ctx, apps, reads, sse};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use spinforge_supervisor::control::Lifecycle;
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;
pub(crate) type Resp = Response<Body>;
pub(crate) type Req = Request<Incoming>;

/// JSON request bodies larger than this are refused (uploads have their own limit).
pub(crate) const MAX_JSON_BODY: usize = 64 << 10;

pub(crate) fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let body = http_body_util::Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).expect("static content types are valid"),
    );
    resp
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    full(status, "application/json", value.to_string())
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Healthz,
    Metrics,
    OpenApi,
    Apps,
    App(&'a str),
    Deploy(&'a str),
    Logs(&'a str),
    Releases(&'a str),
    Rollback(&'a str),
    Lifecycle(&'a str, Lifecycle),
    Build(&'a str),
    BuildLog(&'a str),
    Routes,
    Spinlets,
    Certs,
    Reload,
}

impl<'a> Route<'a> {
    pub fn parse(path: &'a str) -> Option<Route<'a>> {
        match path {
            "/healthz" => return Some(Route::Healthz),
            "/metrics" => return Some(Route::Metrics),
            _ => {}
        }
        let rest = path.strip_prefix("/api/v1/")?;
        let segs: Vec<&str> = rest.split('/').collect();
        Some(match segs.as_slice() {
            ["openapi.json"] => Route::OpenApi,
            ["apps"] => Route::Apps,
            ["apps", app] => Route::App(app),
            ["apps", app, "deploy"] => Route::Deploy(app),
            ["apps", app, "logs"] => Route::Logs(app),
            ["apps", app, "releases"] => Route::Releases(app),
            ["apps", app, "rollback"] => Route::Rollback(app),
            ["apps", app, action] if let Some(l) = Lifecycle::parse(action) => {
                Route::Lifecycle(app, l)
            }
            ["builds", id] => Route::Build(id),
            ["builds", id, "log"] => Route::BuildLog(id),
            ["routes"] => Route::Routes,
            ["spinlets"] => Route::Spinlets,
            ["certs"] => Route::Certs,
            ["reload"] => Route::Reload,
            _ => return None,
        })
    }

    /// For the request counter: a fixed set of names.
    pub fn name(self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
            Route::OpenApi => "openapi",
            Route::Apps => "apps",
            Route::App(_) => "app",
            Route::Deploy(_) => "deploy",
            Route::Logs(_) => "logs",
            Route::Releases(_) => "releases",
            Route::Rollback(_) => "rollback",
            Route::Lifecycle(..) => "lifecycle",
            Route::Build(_) => "build",
            Route::BuildLog(_) => "build_log",
            Route::Routes => "routes",
            Route::Spinlets => "spinlets",
            Route::Certs => "certs",
            Route::Reload => "reload",
        }
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Route::App(_) => &[Method::GET, Method::PUT, Method::DELETE],
            Route::Deploy(_) | Route::Rollback(_) | Route::Lifecycle(..) | Route::Reload => {
                &[Method::POST]
            }
            _ => &[Method::GET],
        }
    }

    fn public(self) -> bool {
        matches!(self, Route::Healthz | Route::Metrics | Route::OpenApi)
    }

    pub fn app(self) -> Option<&'a str> {
        match self {
            Route::App(a)
            | Route::Deploy(a)
            | Route::Logs(a)
            | Route::Releases(a)
            | Route::Rollback(a)
            | Route::Lifecycle(a, _) => Some(a),
            _ => None,
        }
    }
}

/// Answers one request; never fails (errors are problem responses).
pub(crate) async fn handle(ctx: Arc<Ctx>, req: Req, peer: SocketAddr) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if crate::dashboard::owns(&path) {
        return crate::dashboard::handle(ctx, req, peer).await;
    }
    let Some(route) = Route::parse(&path) else {
        ctx.metrics.count("unknown", 404);
        return Problem::not_found(format!("there is no endpoint {path}")).into_response();
    };
    if !route.methods().contains(&method) {
        let allow: Vec<&str> = route.methods().iter().map(Method::as_str).collect();
        ctx.metrics.count(route.name(), 405);
        return Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{path} does not take {method}; it takes {}",
                allow.join(", ")
            ),
        )
        .with_header(header::ALLOW, allow.join(", "))
        .into_response();
    }
    if ctx.token.is_none()
        && !route.public()
        && let Some(why) = auth::refuse_browser_without_token(req.headers())
    {
        tracing::info!(%peer, %method, path = %shown_path(&path), "admin API: refused: {why}");
        let resp = Problem::new(StatusCode::FORBIDDEN, why).into_response();
        finish(&ctx, route, &method, &path, peer, None, &resp, why);
        return resp;
    }
    let caller = if route.public() {
        Caller::Local
    } else {
        match auth::check(ctx.token.as_ref(), req.headers().get(header::AUTHORIZATION)) {
            Ok(c) => c,
            Err(why) => {
                tracing::info!(%peer, %method, path = %shown_path(&path), "admin API: refused: {why}");
                let resp = Problem::new(StatusCode::UNAUTHORIZED, why)
                    .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"spinforge\"")
                    .into_response();
                finish(&ctx, route, &method, &path, peer, None, &resp, why);
                return resp;
            }
        }
    };
    let result = dispatch(&ctx, route, req).await;
    let (resp, note) = match result {
        Ok((resp, note)) => (resp, note),
        Err(p) => {
            let detail = p.detail.clone();
            (p.into_response(), detail)
        }
    };
    finish(
        &ctx,
        route,
        &method,
        &path,
        peer,
        Some(caller.id()),
        &resp,
        &note,
    );
    resp
}

/// A request path for a log line: a client chooses its length.
fn shown_path(path: &str) -> &str {
    const MAX: usize = 256;
    let mut cut = path.len().min(MAX);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    &path[..cut]
}

/// Counts the answer, and records a change (anything but GET) in the audit log. `caller` is the
/// token's id, `None` for a request without a valid token.
#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &Ctx,
    route: Route<'_>,
    method: &Method,
    path: &str,
    peer: SocketAddr,
    caller: Option<&str>,
    resp: &Resp,
    note: &str,
) {
    let status = resp.status().as_u16();
    ctx.metrics.count(route.name(), status);
    if *method != Method::GET && !route.public() {
        ctx.audit.record(&crate::audit::Entry {
            token: caller.unwrap_or("unauthenticated"),
            client: peer.ip(),
            method: method.as_str(),
            path,
            app: route.app(),
            status,
            result: if note.is_empty() {
                resp.status().canonical_reason().unwrap_or("")
            } else {
                note
            },
            unauthenticated: caller.is_none(),
        });
    }
}

type Outcome = Result<(Resp, String), Problem>;

fn read(r: Result<Resp, Problem>) -> Outcome {
    r.map(|resp| (resp, String::new()))
}

async fn dispatch(ctx: &Arc<Ctx>, route: Route<'_>, req: Req) -> Outcome {
    let method = req.method().clone();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    match route {
        Route::Healthz => Ok((full(StatusCode::OK, "text/plain", "ok\n"), String::new())),
        Route::Metrics => Ok((
            full(
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                ctx.metrics.render(),
            ),
            String::new(),
        )),
        Route::OpenApi => Ok((
            full(StatusCode::OK, "application/json", crate::OPENAPI),
            String::new(),
        )),
        Route::Apps => read(reads::apps(ctx).await),
        Route::App(app) => match method {
            Method::PUT => apps::put(ctx, app, req).await,
            Method::DELETE => apps::delete(ctx, app).await,
            _ => read(reads::app(ctx, app).await),
        },
        Route::Deploy(app) => apps::deploy(ctx, app, req).await,
        Route::Logs(app) => read(sse::app_log(ctx, app, &query).await),
        Route::Releases(app) => read(reads::releases(ctx, app).await),
        Route::Rollback(app) => apps::rollback(ctx, app, req).await,
        Route::Lifecycle(app, action) => apps::lifecycle(ctx, app, action).await,
        Route::Build(id) => read(reads::build(ctx, id).await),
        Route::BuildLog(id) => read(sse::build_log(ctx, id, &query).await),
        Route::Routes => read(reads::routes(ctx).await),
        Route::Spinlets => read(reads::spinlets(ctx).await),
        Route::Certs => read(reads::certs(ctx).await),
        Route::Reload => reload(ctx).await,
    }
}

/// Reloads the config file, as SIGHUP does, and answers with what happened: `200` with the
/// report (keys applied, keys that need a restart), or `422` with every error of a refused file.
async fn reload(ctx: &Ctx) -> Outcome {
    use spinforge_state::config::reload::Outcome as Reloaded;
    let Some(reloader) = &ctx.reloader else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process cannot reload its config",
        ));
    };
    let Some(report) = reloader.reload().await else {
        return Err(
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "SpinForge is stopping")
                .with_header(header::RETRY_AFTER, "1"),
        );
    };
    let value = serde_json::to_value(&report).unwrap_or_default();
    match report.outcome {
        Reloaded::Refused => {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{} is invalid ({} error(s)); nothing was changed and the running config goes on",
                    report.file,
                    report.errors.len()
                ),
            );
            p.errors = Some(value["errors"].clone());
            Err(p)
        }
        Reloaded::Applied | Reloaded::Unchanged => {
            let note = match report.applied.len() {
                0 => "reloaded: nothing changed".to_string(),
                n => format!("reloaded: {n} change(s) applied"),
            };
            Ok((json(StatusCode::OK, &value), note))
        }
    }
}

/// The query parameters the API knows; others are ignored.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub follow: bool,
    pub lines: Option<String>,
}

impl Query {
    fn parse(q: &str) -> Query {
        let mut out = Query::default();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "follow" => out.follow = matches!(v, "1" | "true"),
                "lines" => out.lines = Some(v.to_string()),
                _ => {}
            }
        }
        out
    }
}

/// Checks an app name from a path (they end up in paths and keys).
pub(crate) fn app_name(name: &str) -> Result<(), Problem> {
    spinforge_state::config::check_app_name(name).map_err(Problem::bad_request)
}

/// The request's media type, lowercase, without parameters.
pub(crate) fn content_type(req: &Req) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Reads a whole body of at most `limit` bytes.
pub(crate) async fn read_body(req: Req, limit: usize) -> Result<Bytes, Problem> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|len| len > limit as u64) {
        drain(&mut body).await;
        return Err(too_large(limit as u64));
    }
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive within 30s",
                ));
            }
            Ok(None) => return Ok(Bytes::from(out)),
            Ok(Some(Err(e))) => {
                return Err(Problem::bad_request(format!("cannot read the body: {e}")));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                    if out.len() > limit {
                        drain(&mut body).await;
                        return Err(too_large(limit as u64));
                    }
                }
            }
        }
    }
}

/// Bytes of a refused body read and dropped before answering, so that the client sees the
/// answer: closing a socket with unread data resets the connection, and the answer with it.
const DRAIN_MAX: u64 = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn drain(body: &mut Incoming) {
    let mut left = DRAIN_MAX;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                left = left.saturating_sub(data.len() as u64);
                if left == 0 {
                    break;
                }
            }
        }
    })
    .await;
}

/// Drains `req`'s body and passes `problem` on.
pub(crate) async fn refuse(req: Req, problem: Problem) -> Problem {
    let mut body = req.into_body();
    drain(&mut body).await;
    problem
}

pub(crate) fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than the limit of {limit} bytes"),
    )
}
