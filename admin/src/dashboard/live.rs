//! Live pages and deploys: `/ui/events` forwards the store's events (`Store::subscribe`, which
//! in split mode carries what every process publishes through Redis) as Server-Sent Events, so
//! that open pages fetch the parts that changed again, at once, without polling; the deploy page
//! uploads a `.tar.gz` through the API's own deploy handler and streams the build's log.

use super::html::{Esc, Nav};
use super::pages::signed_in_page;
use super::session::Session;
use super::{Asked, Resp, html as html_resp, problem_page};
use crate::router::Query;
use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::json;
use spinforge_state::{Event, Signal};
use std::fmt::Write;
use std::time::Duration;

const KEEPALIVE: Duration = Duration::from_secs(15);

/// What an event says to a page: its kind and the app it is about (when it names one).
fn describe(e: &Event) -> Option<serde_json::Value> {
    Some(match e {
        Event::SpinletState { app, state, .. } => {
            json!({ "kind": "spinlet", "app": app, "state": state })
        }
        Event::BuildState { app, state, .. } => {
            json!({ "kind": "build", "app": app, "state": state })
        }
        Event::UpstreamsChanged { app } => json!({ "kind": "upstreams", "app": app }),
        Event::Wake { app } => json!({ "kind": "wake", "app": app }),
        Event::RouteChanged { .. } => json!({ "kind": "route" }),
        Event::CertUpdated { .. } => json!({ "kind": "cert" }),
        Event::ChallengeChanged { .. } => return None,
    })
}

/// `GET /ui/events`: the store's events, as `event: change` (or `resync` when some were lost).
pub(super) async fn events(a: Asked<'_>) -> Resp {
    let (resp, sink, permit) = match crate::sse::stream(a.ctx) {
        Ok(s) => s,
        Err(p) => return p.into_response(),
    };
    let mut sub = a.ctx.store.subscribe();
    let mut traffic = a.ctx.traffic.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        // The first signal is always a resync: the page was just rendered.
        let mut first = true;
        let stop = sink.shutdown();
        loop {
            let frame = tokio::select! {
                signal = sub.next() => match signal {
                    None => return,
                    Some(Signal::Resync) if std::mem::take(&mut first) => continue,
                    Some(Signal::Resync) => {
                        crate::sse::event(None, Some("resync"), "{}")
                    }
                    Some(Signal::Event(e)) => match describe(&e) {
                        Some(v) => crate::sse::event(None, Some("change"), &v.to_string()),
                        None => continue,
                    },
                },
                changed = traffic.changed() => match changed {
                    Ok(()) => crate::sse::event(None, Some("change"), "{\"kind\":\"traffic\"}"),
                    Err(_) => return,
                },
                _ = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keep-alive\n\n"),
                _ = sink.closed() => return,
                _ = stop.cancelled() => return,
            };
            first = false;
            if !sink.send(frame).await {
                return;
            }
        }
    });
    resp
}

/// `GET /ui/deploy`: pick an app, upload a `.tar.gz`, watch the build.
pub(super) async fn deploy_page(a: Asked<'_>, s: &Session) -> Resp {
    let mut apps = match a.ctx.handle.apps().await {
        Ok(a) => a,
        Err(e) => return problem_page(e.into(), Some("/ui/")),
    };
    apps.retain(|x| {
        !matches!(
            x.config.source,
            spinforge_state::config::AppSource::External(_)
        )
    });
    apps.sort_by(|x, y| x.config.name.cmp(&y.config.name));
    let wanted = a
        .parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("app="))
        .unwrap_or("");
    let limit = a.ctx.max_upload.load(std::sync::atomic::Ordering::Relaxed);
    let mut main = String::from("<h1>Deploy</h1>");
    if apps.is_empty() {
        main.push_str(
            "<section class=\"empty\"><h2>No app to deploy to yet</h2>\
<p>Create one first: <code>spinforge deploy ./my-app --app shop --domain shop.example.com</code> \
creates the app and deploys it; then new releases can be uploaded here.</p></section>",
        );
    } else {
        let _ = write!(
            main,
            "<form id=\"deploy\" class=\"stack narrow-form\">\
<label for=\"deploy-app\">App</label><select id=\"deploy-app\" name=\"app\" required>"
        );
        for app in &apps {
            let c = &app.config;
            let url = c
                .domains
                .first()
                .map(|d| format!("https://{d}/"))
                .unwrap_or_default();
            let _ = write!(
                main,
                "<option value=\"{n}\" data-url=\"{u}\"{sel}>{n}</option>",
                n = Esc(&c.name),
                u = Esc(&url),
                sel = if c.name == wanted { " selected" } else { "" },
            );
        }
        let _ = write!(
            main,
            "</select>\
<label for=\"deploy-file\">Source archive (.tar.gz)</label>\
<input id=\"deploy-file\" name=\"file\" type=\"file\" accept=\".tar.gz,.tgz,application/gzip\" aria-describedby=\"deploy-help\">\
<p id=\"deploy-help\" class=\"hint\">A <code>.tar.gz</code> of the app's folder with its <code>package.json</code> at the top, \
at most {} MiB (<code>tar czf app.tar.gz --exclude=node_modules -C my-app .</code>).</p>\
<label for=\"deploy-folder\">Or a folder</label>\
<input id=\"deploy-folder\" name=\"folder\" type=\"file\" webkitdirectory multiple aria-describedby=\"deploy-folder-help\">\
<p id=\"deploy-folder-help\" class=\"hint\">Packed here, leaving out <code>node_modules</code> and <code>.git</code> \
(<code>.gitignore</code> files are not read: <code>spinforge deploy</code> reads them).</p>\
<label for=\"deploy-git\">Or a git URL</label>\
<input id=\"deploy-git\" name=\"git\" type=\"text\" inputmode=\"url\" autocomplete=\"off\" spellcheck=\"false\" \
placeholder=\"https://github.com/me/shop.git#main\" aria-describedby=\"deploy-git-help\">\
<p id=\"deploy-git-help\" class=\"hint\">https://, ssh://, git:// or file:// with an optional <code>#branch</code>, tag or commit; \
credentials in it are never shown.</p>\
<button type=\"submit\" class=\"primary\">Deploy</button></form>\
<noscript><p class=\"error\">Uploading from the browser needs JavaScript; <code>spinforge deploy</code> does the same.</p></noscript>\
<p id=\"deploy-status\" class=\"live-status\" role=\"status\"></p>\
<p id=\"deploy-result\" role=\"status\"></p>\
<pre id=\"build-log\" class=\"log\" tabindex=\"0\" role=\"log\" aria-label=\"Build log\" hidden></pre>",
            limit >> 20
        );
    }
    html_resp(
        StatusCode::OK,
        signed_in_page(s, "Deploy", Nav::Deploy, &main),
    )
}

/// `POST /ui/apps/{app}/deploy`: the upload (the script's `fetch`, with the CSRF token in
/// `X-CSRF-Token`), handed to the API's deploy handler. Answers as the API does (JSON).
pub(super) async fn deploy(mut a: Asked<'_>, s: &Session, name: &str) -> Resp {
    let given = a
        .parts
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(refused) = super::pages::refused(&a, s, given.as_deref(), Some(name)) {
        if let Some(mut body) = a.body.take() {
            crate::router::drain(&mut body).await;
        }
        return refused;
    }
    let Some(body) = a.body.take() else {
        return problem_page(
            crate::problem::Problem::bad_request("no body"),
            Some("/ui/deploy"),
        );
    };
    let mut req = Request::new(body);
    for h in [
        http::header::CONTENT_TYPE,
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
    ] {
        if let Some(v) = a.parts.headers.get(&h) {
            req.headers_mut().insert(h, v.clone());
        }
    }
    match crate::apps::deploy(a.ctx, name, req).await {
        Ok((resp, note)) => {
            a.audit(
                Some(&s.caller),
                Some(name),
                resp.status(),
                &format!("dashboard: {note}"),
            );
            resp
        }
        Err(p) => {
            a.audit(Some(&s.caller), Some(name), p.status, &p.detail);
            p.into_response()
        }
    }
}

/// `GET /ui/builds/{id}/log`: the API's build log stream, followed to its end.
pub(super) async fn build_log(a: Asked<'_>, id: &str) -> Resp {
    let q = Query {
        follow: true,
        lines: None,
    };
    match crate::sse::build_log(a.ctx, id, &q).await {
        Ok(resp) => resp,
        Err(p) => p.into_response(),
    }
}
