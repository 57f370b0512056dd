//! The endpoints that change things: create/replace/delete an app, deploy, roll back, start,
//! stop, restart. Each checks what it can before asking the supervisor, so that bad input is
//! refused with nothing changed.

use crate::Ctx;
use crate::problem::Problem;
use crate::reads::app_view;
use crate::router::{MAX_JSON_BODY, Req, Resp, app_name, content_type, json, read_body};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use spinforge_state::config::{AppSource, parse_app};
use spinforge_supervisor::control::Lifecycle;
use std::path::Path;

type Outcome = Result<(Resp, String), Problem>;

async fn need_json(req: Req) -> Result<Req, Problem> {
    match check_json(&req) {
        Ok(()) => Ok(req),
        Err(p) => Err(crate::router::refuse(req, p).await),
    }
}

fn check_json(req: &Req) -> Result<(), Problem> {
    match content_type(req).as_str() {
        "application/json" => Ok(()),
        "" => Err(unsupported("no Content-Type; send application/json")),
        other => Err(unsupported(&format!(
            "Content-Type {other} is not accepted here; send application/json"
        ))),
    }
}

fn unsupported(why: &str) -> Problem {
    Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, why)
}

/// Parses a JSON body into `T` (which refuses unknown fields).
async fn json_body<T: serde::de::DeserializeOwned>(req: Req) -> Result<T, Problem> {
    let req = need_json(req).await?;
    let body = read_body(req, MAX_JSON_BODY).await?;
    serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("the body is not what this endpoint takes: {e}")))
}

/// Where located errors in a request body say they are.
fn body_file() -> &'static Path {
    Path::new("request body")
}

pub(crate) async fn put(ctx: &Ctx, name: &str, req: Req) -> Outcome {
    if let Err(p) = app_name(name) {
        return Err(crate::router::refuse(req, p).await);
    }
    let req = need_json(req).await?;
    let body = read_body(req, MAX_JSON_BODY).await?;
    let text =
        std::str::from_utf8(&body).map_err(|_| Problem::bad_request("the body is not UTF-8"))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Problem::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Problem::bad_request(
            "the body must be a JSON object: an app section as under `apps.<name>` in the YAML",
        ));
    }
    // Checked here first, so that bad input is answered even when the supervisor is busy, and
    // changes nothing. An app without a source waits for its first deploy: stand one in.
    let placeholder = AppSource::Directory(ctx.data_dir.join("uploads"));
    let app =
        parse_app(name, text, body_file(), Some(placeholder)).map_err(|e| Problem::invalid(&e))?;
    let others = ctx.handle.apps().await?;
    for other in others.iter().filter(|o| o.config.name != name) {
        if let Some(d) = app
            .domains
            .iter()
            .find(|d| other.config.domains.contains(d))
        {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!("domain {d} is already taken by app `{}`", other.config.name),
            ));
        }
    }
    let existed = others.iter().any(|o| o.config.name == name);
    let managed = ctx.handle.put_app(name, text).await?;
    let record = ctx.store.app(name).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        json(status, &app_view(&managed, record.as_ref())),
        if existed { "replaced" } else { "created" }.into(),
    ))
}

pub(crate) async fn delete(ctx: &Ctx, name: &str) -> Outcome {
    app_name(name)?;
    ctx.handle.delete_app(name).await?;
    Ok((
        crate::router::full(StatusCode::NO_CONTENT, "application/json", ""),
        "deleted".into(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    source: String,
}

pub(crate) async fn deploy(ctx: &Ctx, name: &str, req: Req) -> Outcome {
    app_name(name)?;
    // Unknown apps are refused before an upload is stored.
    if let Err(e) = ctx.handle.app(name).await {
        return Err(crate::router::refuse(req, e.into()).await);
    }
    let source = match content_type(&req).as_str() {
        "application/gzip" | "application/x-gzip" | "application/octet-stream" => {
            AppSource::Tarball(crate::upload::receive(ctx, name, req).await?)
        }
        "application/json" => {
            let body: DeployBody = json_body(req).await?;
            git_source(name, &body.source)?
        }
        "" => {
            let p = unsupported(
                "no Content-Type: send a .tar.gz as application/gzip, or {\"source\": \"<git url>\"} as application/json",
            );
            return Err(crate::router::refuse(req, p).await);
        }
        other => {
            let p = unsupported(&format!(
                "Content-Type {other} is not accepted here: send a .tar.gz as application/gzip, or {{\"source\": \"<git url>\"}} as application/json"
            ));
            return Err(crate::router::refuse(req, p).await);
        }
    };
    let upload = match &source {
        AppSource::Tarball(p) => Some(p.clone()),
        _ => None,
    };
    match ctx.handle.deploy(name, Some(source)).await {
        Ok(build) => Ok((
            json(StatusCode::ACCEPTED, &json!({ "build": build })),
            format!("build {build}"),
        )),
        Err(e) => {
            if let Some(p) = upload {
                let _ = std::fs::remove_file(p);
            }
            Err(e.into())
        }
    }
}

/// A git URL (with an optional `#ref`), checked like the YAML's `source:`. Folders and archives
/// on the server are not for API clients to name.
fn git_source(app: &str, url: &str) -> Result<AppSource, Problem> {
    // parse_app checks a whole app section: give it the one other key it needs.
    let text = json!({ "source": url, "domains": ["deploy.invalid"] }).to_string();
    let parsed = parse_app(app, &text, body_file(), None).map_err(|e| Problem::invalid(&e))?;
    match parsed.source {
        AppSource::Git { url: u, reference } if !is_local_path(u.expose()) => {
            Ok(AppSource::Git { url: u, reference })
        }
        _ => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "`source` must be a git URL (https://, ssh://, git://, file:// or git@host:path): `{}` is not one; upload a .tar.gz to deploy a folder",
                spinforge_state::config::GitUrl::new(url)
            ),
        )),
    }
}

/// A repository named by a bare server path (not a URL).
fn is_local_path(url: &str) -> bool {
    !(url.contains("://") || url.starts_with("git@"))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    release: Option<u64>,
}

pub(crate) async fn rollback(ctx: &Ctx, name: &str, req: Req) -> Outcome {
    app_name(name)?;
    let has_body = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(http::header::TRANSFER_ENCODING);
    let body: RollbackBody = if has_body {
        json_body(req).await?
    } else {
        RollbackBody::default()
    };
    rollback_to(ctx, name, body.release).await
}

/// Serves `release` of `name` again (default: the previous one); the API's rollback and the
/// dashboard's button.
pub(crate) async fn rollback_to(ctx: &Ctx, name: &str, release: Option<u64>) -> Outcome {
    app_name(name)?;
    ctx.handle.app(name).await?;
    let release = ctx.handle.rollback(name, release).await?;
    Ok((
        json(StatusCode::OK, &json!({ "app": name, "release": release })),
        format!("release {release}"),
    ))
}

pub(crate) async fn lifecycle(ctx: &Ctx, name: &str, action: Lifecycle) -> Outcome {
    app_name(name)?;
    ctx.handle.app(name).await?;
    ctx.handle.lifecycle(name, action).await?;
    let action = action.as_str();
    Ok((
        json(StatusCode::OK, &json!({ "app": name, "action": action })),
        action.into(),
    ))
}
