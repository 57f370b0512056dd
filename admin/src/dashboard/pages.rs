//! The dashboard's pages and the sign-in, sign-out and change handlers behind its forms.

use super::html::{self, Esc, Frame, Nav};
use super::session::{self, Session};
use super::{Asked, error_page, html as html_resp, problem_page, redirect};
use crate::problem::Problem;
use crate::reads;
use http::{StatusCode, header};
use serde_json::Value;
use spinforge_state::records::SpinletState;
use std::fmt::Write;
use std::time::Duration;

/// How long the sign-in form's own CSRF cookie lasts.
const SIGN_IN_FORM: Duration = Duration::from_secs(3600);

pub(super) fn signed_in_page(session: &Session, title: &str, nav: Nav, main: &str) -> String {
    html::page(
        &Frame {
            title,
            csrf: Some(&session.csrf),
            nav,
        },
        main,
    )
}

/// The sign-in form, with a fresh CSRF value in a cookie and a hidden field (`error`: why the
/// last try failed).
pub(super) async fn sign_in_page(a: Asked<'_>, error: Option<(StatusCode, &str)>) -> super::Resp {
    if error.is_none() {
        let signed_in = session::cookie(&a.parts.headers, session::COOKIE)
            .is_some_and(|id| a.ctx.sessions.get(id).is_some());
        if signed_in {
            return redirect("/ui/", &[]);
        }
    }
    let nonce = a.ctx.sessions.random();
    let secure = session::https(&a.parts);
    let mut main = String::from("<div class=\"narrow\"><h1>Sign in</h1>");
    if let Some((_, why)) = error {
        let _ = write!(
            main,
            "<p class=\"error\" role=\"alert\" id=\"signin-error\">{}</p>",
            Esc(why)
        );
    }
    let _ = write!(
        main,
        "<form method=\"post\" action=\"/ui/login\" class=\"stack\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        Esc(&nonce)
    );
    if a.ctx.token.is_some() {
        main.push_str(
            "<label for=\"token\">Admin token</label>\
<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus \
aria-describedby=\"token-help\">\
<p id=\"token-help\" class=\"hint\">The value of the variable <code>supervisor.admin_token_env</code> names \
(<code>SPINFORGE_TOKEN</code> by default), as the CLI uses it.</p>",
        );
    } else {
        main.push_str(
            "<p class=\"hint\">No admin token is set: anyone on this machine may sign in, as anyone on it may use the API.</p>",
        );
    }
    main.push_str("<button type=\"submit\" class=\"primary\">Sign in</button></form></div>");
    let status = error.map_or(StatusCode::OK, |(s, _)| s);
    let mut resp = html_resp(
        status,
        html::page(
            &Frame {
                title: "Sign in",
                csrf: None,
                nav: Nav::None,
            },
            &main,
        ),
    );
    let cookie = session::set_cookie(
        session::LOGIN_COOKIE,
        &nonce,
        "/ui/login",
        SIGN_IN_FORM,
        secure,
    );
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /ui/login`: the token for a session. Failures are counted per address, refused for a
/// while past the limit, and recorded in the audit log.
pub(super) async fn sign_in(mut a: Asked<'_>) -> super::Resp {
    let ip = a.peer.ip();
    if let Some(wait) = a.ctx.sessions.limited(ip) {
        if let Some(mut body) = a.body.take() {
            crate::router::drain(&mut body).await;
        }
        let why = format!(
            "too many failed sign-ins: wait {wait} s (at most {} a minute from one address)",
            session::FAILURES_PER_CLIENT
        );
        a.audit(None, None, StatusCode::TOO_MANY_REQUESTS, &why);
        let mut resp = error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many tries",
            &format!("Too many failed sign-ins from your address: try again in {wait} s."),
            Some("/ui/login"),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from(wait));
        return resp;
    }
    let form = match a.form().await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let expected = session::cookie(&a.parts.headers, session::LOGIN_COOKIE).unwrap_or("");
    let csrf_ok =
        !expected.is_empty() && form.get("csrf").is_some_and(|g| session::same(g, expected));
    if !csrf_ok || a.cross_site() {
        a.audit(
            None,
            None,
            StatusCode::FORBIDDEN,
            "dashboard sign-in refused: the form's CSRF value does not match",
        );
        return sign_in_page(
            a,
            Some((
                StatusCode::FORBIDDEN,
                "This form expired or was not sent from this page: try again.",
            )),
        )
        .await;
    }
    let caller = match &a.ctx.token {
        None => "local".to_string(),
        Some(t) if t.matches(form.get("token").unwrap_or("")) => t.id.clone(),
        Some(_) => {
            a.ctx.sessions.failed(ip);
            tracing::info!(peer = %a.peer, "dashboard: sign-in refused: the token is not valid");
            a.audit(
                None,
                None,
                StatusCode::UNAUTHORIZED,
                "dashboard sign-in refused: the token is not valid",
            );
            return sign_in_page(
                a,
                Some((StatusCode::UNAUTHORIZED, "That is not the admin token.")),
            )
            .await;
        }
    };
    let (id, _) = a.ctx.sessions.open(&caller);
    a.audit(
        Some(&caller),
        None,
        StatusCode::SEE_OTHER,
        "dashboard: signed in",
    );
    let secure = session::https(&a.parts);
    redirect(
        "/ui/",
        &[
            session::set_cookie(session::COOKIE, &id, "/", session::LIFETIME, secure),
            session::set_cookie(
                session::LOGIN_COOKIE,
                "",
                "/ui/login",
                Duration::ZERO,
                secure,
            ),
        ],
    )
}

/// `POST /ui/logout`.
pub(super) async fn sign_out(mut a: Asked<'_>, id: &str, s: &Session) -> super::Resp {
    let form = match a.form().await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if let Some(refused) = refused(&a, s, form.get("csrf"), None) {
        return refused;
    }
    a.ctx.sessions.close(id);
    a.audit(
        Some(&s.caller),
        None,
        StatusCode::SEE_OTHER,
        "dashboard: signed out",
    );
    let secure = session::https(&a.parts);
    redirect(
        "/ui/login",
        &[session::set_cookie(
            session::COOKIE,
            "",
            "/",
            Duration::ZERO,
            secure,
        )],
    )
}

/// The refusal of a change whose CSRF token is wrong or that comes from another site (and its
/// audit line), or `None` when it may go on.
pub(super) fn refused(
    a: &Asked<'_>,
    s: &Session,
    given: Option<&str>,
    app: Option<&str>,
) -> Option<super::Resp> {
    if super::csrf_ok(s, given) && !a.cross_site() {
        return None;
    }
    tracing::info!(peer = %a.peer, path = %super::shown(a.path()), "dashboard: refused a change: wrong CSRF token or another site");
    a.audit(
        Some(&s.caller),
        app,
        StatusCode::FORBIDDEN,
        "dashboard: refused: the CSRF token is wrong or the request came from another site",
    );
    Some(error_page(
        StatusCode::FORBIDDEN,
        "Refused",
        "This change did not come from a dashboard page of this session (its CSRF token is wrong): reload the page and try again.",
        Some("/ui/"),
    ))
}

/// What the overview shows of one app.
struct Row {
    view: Value,
    state: String,
    reason: Option<String>,
    running: usize,
    spinlets: usize,
    last_deploy_ms: Option<u64>,
}

/// When a release was built: its `release.json`'s `created_ms`.
async fn release_created(a: &Asked<'_>, app: &str, release: u64) -> Option<u64> {
    reads::release_info(&a.ctx.data_dir, app, release)
        .await
        .and_then(|i| i.get("created_ms").and_then(Value::as_u64))
}

async fn rows(a: &Asked<'_>) -> Result<Vec<Row>, Problem> {
    let mut apps = a.ctx.handle.apps().await?;
    apps.sort_by(|x, y| x.config.name.cmp(&y.config.name));
    let records = a.ctx.store.apps().await?;
    let spinlets = a.ctx.store.spinlets().await?;
    let mut out = Vec::with_capacity(apps.len());
    for app in &apps {
        let name = &app.config.name;
        let record = records.iter().find(|r| &r.name == name);
        let mine: Vec<_> = spinlets.iter().filter(|s| &s.app == name).collect();
        // The newest release's build (a rollback is not a deploy).
        let last_deploy_ms = match record.and_then(|r| r.releases.iter().max().copied()) {
            Some(n) => release_created(a, name, n).await,
            None => None,
        };
        out.push(Row {
            view: reads::app_view(app, record),
            state: record
                .map(|r| r.state.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            reason: record.and_then(|r| r.reason.clone()),
            running: mine
                .iter()
                .filter(|s| s.state == SpinletState::Running)
                .count(),
            spinlets: mine.len(),
            last_deploy_ms,
        });
    }
    Ok(out)
}

pub(super) fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// A state as a badge (text, not only colour).
pub(super) fn badge(state: &str) -> String {
    let class = match state {
        "running" => "ok",
        "failed" | "crashed" => "bad",
        "starting" | "stopping" | "waiting" | "queued" => "busy",
        _ => "idle",
    };
    format!("<span class=\"badge badge-{class}\">{}</span>", Esc(state))
}

/// The domains of an app, one per line.
pub(super) fn domains(view: &Value) -> String {
    let list: Vec<String> = view
        .get("domains")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(Value::as_str)
                .map(|d| format!("<span class=\"domain\">{}</span>", Esc(d)))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        "<span class=\"muted\">none</span>".into()
    } else {
        list.join("<br>")
    }
}

/// `GET /ui/`: every app.
pub(super) async fn overview(a: Asked<'_>, s: &Session) -> super::Resp {
    let rows = match rows(&a).await {
        Ok(r) => r,
        Err(p) => return problem_page(p, None),
    };
    let now = spinforge_state::now_ms();
    a.ctx.traffic.wanted(a.ctx.shutdown.clone());
    let source = a.ctx.traffic.source();
    let mut main = String::from("<h1>Apps</h1><div id=\"apps\" data-live>");
    if rows.is_empty() {
        main.push_str(
            "<section class=\"empty\" aria-labelledby=\"empty-title\"><h2 id=\"empty-title\">No apps yet: here is how to deploy one</h2>\
<p>From a machine with the <code>spinforge</code> CLI and the admin token, deploy a folder with a Node.js app \
(its <code>package.json</code> at the top):</p>\
<pre><code>export SPINFORGE_ADMIN_URL=http://127.0.0.1:9000 SPINFORGE_TOKEN=…\n\
spinforge deploy ./my-app --app shop --domain shop.example.com</code></pre>\
<p>Or add the app to <code>apps:</code> in <code>spinforge.yaml</code> and reload. It shows up here as soon as it exists.</p></section>",
        );
    } else {
        let running: usize = rows.iter().map(|r| r.running).sum();
        let _ = write!(
            main,
            "<p class=\"summary\">{} app{} · {running} spinlet{} running</p>\
<div class=\"table-wrap cards\"><table><caption class=\"sr-only\">All apps</caption><thead><tr>\
<th scope=\"col\">App</th><th scope=\"col\">State</th><th scope=\"col\">Instances</th>\
<th scope=\"col\">Release</th><th scope=\"col\">Domains</th><th scope=\"col\">Traffic</th>\
<th scope=\"col\">Last deploy</th></tr></thead><tbody>",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            if running == 1 { "" } else { "s" },
        );
        for r in &rows {
            let name = str_of(&r.view, "name");
            let instances = r.view.get("instances").and_then(Value::as_u64).unwrap_or(0);
            let external = r.view.get("external").and_then(Value::as_bool) == Some(true);
            let release = match r.view.get("current_release").and_then(Value::as_u64) {
                Some(n) => {
                    let kept = r
                        .view
                        .get("releases")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    format!("#{n} <span class=\"muted\">({kept} kept)</span>")
                }
                None if external => "<span class=\"muted\">external</span>".into(),
                None => "<span class=\"muted\">none yet</span>".into(),
            };
            let deployed = match r.last_deploy_ms {
                Some(ms) => format!(
                    "<time datetime=\"{}\" title=\"{}\">{} ago</time>",
                    Esc(&html::date(ms)),
                    Esc(&html::date(ms)),
                    html::age(now.saturating_sub(ms))
                ),
                None => "<span class=\"muted\">never</span>".into(),
            };
            let reason = r
                .reason
                .as_deref()
                .map(|why| {
                    let why = spinforge_state::config::redact_userinfo(why);
                    let first = why.lines().next().unwrap_or("");
                    format!("<div class=\"reason\">{}</div>", Esc(super::shown(first)))
                })
                .unwrap_or_default();
            let _ = write!(
                main,
                "<tr data-app=\"{n}\"><th scope=\"row\"><a href=\"/ui/apps/{n}\">{n}</a></th>\
<td data-label=\"State\">{}{reason}</td><td data-label=\"Instances\">{} of {instances} running{}</td>\
<td data-label=\"Release\">{release}</td><td data-label=\"Domains\">{}</td><td data-label=\"Traffic\">{}</td>\
<td data-label=\"Last deploy\">{deployed}</td></tr>",
                badge(&r.state),
                r.running,
                if r.spinlets > r.running {
                    format!(
                        " <span class=\"muted\">({} other)</span>",
                        r.spinlets - r.running
                    )
                } else {
                    String::new()
                },
                domains(&r.view),
                super::traffic::cell(&source, &a.ctx.traffic.series(name)),
                n = Esc(name),
            );
        }
        main.push_str("</tbody></table></div>");
    }
    main.push_str("</div>");
    html_resp(
        StatusCode::OK,
        signed_in_page(s, "Apps", Nav::Overview, &main),
    )
}
