//! The read-only endpoints: apps, releases, builds, routes, spinlets, certificates. Env values
//! and private keys never leave: apps show env names only, certificates their dates only.

use crate::Ctx;
use crate::problem::Problem;
use crate::router::{Resp, app_name, json};
use http::StatusCode;
use serde_json::{Value, json};
use spinforge_state::config::{AppSource, redact_userinfo};
use spinforge_state::records::AppRecord;
use spinforge_supervisor::control::ManagedApp;
use spinforge_supervisor::release;

/// An app as the API shows it.
pub(crate) fn app_view(app: &ManagedApp, record: Option<&AppRecord>) -> Value {
    let c = &app.config;
    json!({
        "name": c.name,
        "origin": app.origin.as_str(),
        "domains": c.domains,
        // GitUrl's Display hides credentials.
        "source": c.source.to_string(),
        "external": matches!(c.source, AppSource::External(_)),
        "framework": c.framework.as_str(),
        "instances": c.instances,
        "memory": c.memory,
        "cpu": c.cpu,
        "idle_timeout_s": c.idle_timeout.map(|d| d.as_secs()),
        "env": c.env.keys().collect::<Vec<_>>(),
        "current_release": record.and_then(|r| r.current_release),
        "releases": record.map(|r| r.releases.clone()).unwrap_or_default(),
    })
}

pub(crate) async fn apps(ctx: &Ctx) -> Result<Resp, Problem> {
    let mut apps = ctx.handle.apps().await?;
    apps.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    let records = ctx.store.apps().await?;
    let list: Vec<Value> = apps
        .iter()
        .map(|a| {
            let r = records.iter().find(|r| r.name == a.config.name);
            app_view(a, r)
        })
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(list)))
}

pub(crate) async fn app(ctx: &Ctx, name: &str) -> Result<Resp, Problem> {
    app_name(name)?;
    let app = ctx.handle.app(name).await?;
    let record = ctx.store.app(name).await?;
    Ok(json(StatusCode::OK, &app_view(&app, record.as_ref())))
}

pub(crate) async fn releases(ctx: &Ctx, name: &str) -> Result<Resp, Problem> {
    app_name(name)?;
    ctx.handle.app(name).await?;
    let record = ctx.store.app(name).await?;
    let current = record.as_ref().and_then(|r| r.current_release);
    let numbers = record.map(|r| r.releases).unwrap_or_default();
    let pinned = pinned_release(&ctx.data_dir, name).await;
    let mut list = Vec::new();
    for n in numbers.iter().rev() {
        // release.json says how it was built; a release whose file is gone still shows.
        let info = release_info(&ctx.data_dir, name, *n).await;
        let field = |k: &str| {
            info.as_ref()
                .and_then(|i| i.get(k))
                .cloned()
                .unwrap_or(Value::Null)
        };
        list.push(json!({
            "release": n,
            "current": Some(*n) == current,
            "pinned": Some(*n) == pinned,
            "framework": field("framework"),
            // Releases built before credentials were redacted may still hold them.
            "source": field("source").as_str().map(|s| redact_userinfo(s).into_owned()),
            "source_commit": field("source_commit"),
            "build_id": field("build_id"),
            "created_ms": field("created_ms"),
        }));
    }
    Ok(json(StatusCode::OK, &Value::Array(list)))
}

/// The release the app's last rollback holds until its next deploy or source edit, if any.
pub(crate) async fn pinned_release(data_dir: &std::path::Path, app: &str) -> Option<u64> {
    let releases = release::releases_dir(data_dir, app);
    release::read_pin(&releases).await.map(|p| p.release)
}

/// A release's `release.json` (how it was built), when it can be read.
pub(crate) async fn release_info(data_dir: &std::path::Path, app: &str, n: u64) -> Option<Value> {
    let path = release::releases_dir(data_dir, app)
        .join(n.to_string())
        .join("release.json");
    let text = tokio::fs::read_to_string(path).await.ok()?;
    serde_json::from_str(&text).ok()
}

/// Build ids are `<app>-<ms>-<random>`: anything else cannot name one.
pub(crate) fn build_id(id: &str) -> Result<(), Problem> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request(format!("`{id}` is not a build id")))
    }
}

pub(crate) fn build_view(b: &spinforge_state::records::BuildStatus) -> Value {
    json!({
        "id": b.id,
        "app": b.app,
        "state": b.state.as_str(),
        "queued_ms": b.queued,
        "started_ms": b.started,
        "finished_ms": b.finished,
        "release": b.release,
        "error": b.error.as_deref().map(redact_userinfo),
        "steps": b.steps.iter().map(|s| json!({"name": s.name, "ms": s.ms})).collect::<Vec<_>>(),
    })
}

pub(crate) async fn build(ctx: &Ctx, id: &str) -> Result<Resp, Problem> {
    build_id(id)?;
    match ctx.store.build(id).await? {
        Some(b) => Ok(json(StatusCode::OK, &build_view(&b))),
        None => Err(Problem::not_found(format!("there is no build `{id}`"))),
    }
}

pub(crate) async fn routes(ctx: &Ctx) -> Result<Resp, Problem> {
    let mut routes = ctx.store.routes().await?;
    routes.sort_by(|a, b| a.domain.cmp(&b.domain));
    let list: Vec<Value> = routes
        .iter()
        .map(|r| {
            json!({
                "domain": r.domain,
                "app": r.app,
                "release": r.release,
                "external": r.external,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(list)))
}

pub(crate) async fn spinlets(ctx: &Ctx) -> Result<Resp, Problem> {
    let mut spinlets = ctx.store.spinlets().await?;
    spinlets.sort_by(|a, b| (&a.app, &a.id).cmp(&(&b.app, &b.id)));
    let list: Vec<Value> = spinlets
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "app": s.app,
                "release": s.release,
                "state": s.state.as_str(),
                "pid": s.pid,
                "host": s.host,
                "port": s.port,
                "started_ms": s.started,
                "restarts": s.restarts,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(list)))
}

pub(crate) async fn certs(ctx: &Ctx) -> Result<Resp, Problem> {
    let mut certs = ctx.store.certs().await?;
    certs.sort_by(|a, b| a.domain.cmp(&b.domain));
    let now = (spinforge_state::now_ms() / 1000) as i64;
    let list: Vec<Value> = certs
        .iter()
        .map(|c| {
            json!({
                "domain": c.domain,
                "not_after": c.not_after,
                "expires_in_days": (c.not_after - now).div_euclid(86_400),
                "issued_ms": c.issued_ms,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(list)))
}
