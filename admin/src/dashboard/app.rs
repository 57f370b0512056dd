//! An app's page (facts, spinlets, releases with rollback, the live log) and its buttons: start,
//! stop, restart and rollback go through the API's own handlers (`apps.rs`) and are audited.

use super::html::{self, Esc, Nav};
use super::pages::{badge, domains, refused, signed_in_page, str_of};
use super::session::Session;
use super::{Asked, Resp, error_page, html as html_resp, problem_page, redirect};
use crate::problem::Problem;
use crate::reads;
use crate::router::{Query, app_name};
use http::StatusCode;
use serde_json::Value;
use spinforge_supervisor::control::Lifecycle;
use std::fmt::Write;

/// Lines of the log shown when the page opens; new ones follow.
const LOG_TAIL: &str = "200";

/// What the page says after a change it redirected from (`?done=`): a fixed set of words, never
/// text from the query.
fn done_notice(query: &str) -> Option<String> {
    let done = query.split('&').find_map(|p| p.strip_prefix("done="))?;
    Some(match done {
        "start" => "Started.".into(),
        "stop" => "Stopped.".into(),
        "restart" => "Restarted.".into(),
        other => {
            let n: u64 = other.strip_prefix("rollback-")?.parse().ok()?;
            format!("Rolled back: release {n} is served now.")
        }
    })
}

fn fact(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<dt>{}</dt><dd>{value}</dd>", Esc(name));
}

/// Resident memory (bytes) and CPU time used (seconds) of a spinlet's process, from `/proc`, when
/// that pid is still the process the record names (its start time matches).
async fn usage(pid: u32, proc_start: u64) -> Option<(u64, f64)> {
    if pid == 0 {
        return None;
    }
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .ok()?;
    // Fields after the command (which may hold spaces and parentheses): field 3 first.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if proc_start != 0 && field(22)? != proc_start {
        return None;
    }
    // utime + stime, in USER_HZ (100 a second on Linux, whatever the kernel's HZ).
    let cpu = (field(14)? + field(15)?) as f64 / 100.0;
    let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
        .await
        .ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some((rss_kib * 1024, cpu))
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `GET /ui/apps/{app}`.
pub(super) async fn page(a: Asked<'_>, s: &Session, name: &str) -> Resp {
    match render(&a, s, name).await {
        Ok(main) => html_resp(
            StatusCode::OK,
            signed_in_page(s, name, Nav::Overview, &main),
        ),
        Err(p) => problem_page(p, Some("/ui/")),
    }
}

async fn render(a: &Asked<'_>, s: &Session, name: &str) -> Result<String, Problem> {
    app_name(name)?;
    let app = a.ctx.handle.app(name).await?;
    let record = a.ctx.store.app(name).await?;
    let view = reads::app_view(&app, record.as_ref());
    let mut spinlets: Vec<_> = a
        .ctx
        .store
        .spinlets()
        .await?
        .into_iter()
        .filter(|sp| sp.app == name)
        .collect();
    spinlets.sort_by(|x, y| x.id.cmp(&y.id));
    let now = spinforge_state::now_ms();
    let n = Esc(name);
    let csrf = Esc(&s.csrf);

    let mut out = format!("<p><a href=\"/ui/\">← All apps</a></p><h1>{n}</h1>");
    if let Some(notice) = done_notice(a.parts.uri.query().unwrap_or("")) {
        let _ = write!(
            out,
            "<p class=\"notice\" role=\"status\">{}</p>",
            Esc(&notice)
        );
    }

    // Facts and buttons.
    let state = record
        .as_ref()
        .map(|r| r.state.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown");
    let _ = write!(out, "<div id=\"facts\" data-live><dl class=\"facts\">");
    let mut state_html = badge(state);
    if let Some(why) = record.as_ref().and_then(|r| r.reason.as_deref()) {
        let why = spinforge_state::config::redact_userinfo(why);
        let _ = write!(state_html, "<pre class=\"reason\">{}</pre>", Esc(&why));
    }
    fact(&mut out, "State", &state_html);
    // Each domain with its certificate.
    let certs = a.ctx.store.certs().await?;
    let now_s = (now / 1000) as i64;
    let domain_list: Vec<String> = app
        .config
        .domains
        .iter()
        .map(|d| {
            let stored = certs.iter().find(|r| &r.domain == d);
            format!(
                "<span class=\"domain\">{}</span> <span class=\"muted\">— certificate: {}</span>{}",
                Esc(d),
                Esc(&super::certs::source(&app.config.tls, d, stored.is_some())),
                stored
                    .map(|r| format!(" {}", super::certs::expiry(r, now_s)))
                    .unwrap_or_default()
            )
        })
        .collect();
    fact(
        &mut out,
        "Domains",
        &if domain_list.is_empty() {
            domains(&view)
        } else {
            domain_list.join("<br>")
        },
    );
    fact(
        &mut out,
        "Source",
        &Esc(str_of(&view, "source")).to_string(),
    );
    fact(
        &mut out,
        "Origin",
        &Esc(str_of(&view, "origin")).to_string(),
    );
    fact(
        &mut out,
        "Framework",
        &Esc(str_of(&view, "framework")).to_string(),
    );
    let limits = format!(
        "{} instance(s); memory {}; CPU {}; idle timeout {}",
        view["instances"].as_u64().unwrap_or(0),
        view["memory"]
            .as_u64()
            .map_or("no limit".into(), |b| format!("{} MiB", b >> 20)),
        view["cpu"]
            .as_f64()
            .map_or("no limit".into(), |c| format!("{c} core(s)")),
        view["idle_timeout_s"]
            .as_u64()
            .map_or("never".into(), |t| format!("{t} s")),
    );
    fact(&mut out, "Limits", &Esc(&limits).to_string());
    let env: Vec<String> = view["env"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .map(|k| format!("<code>{}</code>", Esc(k)))
                .collect()
        })
        .unwrap_or_default();
    fact(
        &mut out,
        "Environment",
        &if env.is_empty() {
            "<span class=\"muted\">none</span>".to_string()
        } else {
            format!(
                "{} <span class=\"muted\">(names only; values are never shown)</span>",
                env.join(", ")
            )
        },
    );
    out.push_str("</dl></div>");
    if !view["external"].as_bool().unwrap_or(false) {
        let _ = write!(
            out,
            "<div class=\"actions\" role=\"group\" aria-label=\"Lifecycle\">"
        );
        for (action, label, class, confirm) in [
            ("start", "Start", "", ""),
            ("restart", "Restart", "", ""),
            (
                "stop",
                "Stop",
                "danger",
                " data-confirm=\"Stop this app? Requests get 503 until it starts again.\"",
            ),
        ] {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/ui/apps/{n}/{action}\"{confirm}>\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" class=\"{class}\">{label}</button></form>"
            );
        }
        let _ = write!(
            out,
            "<a class=\"button\" href=\"/ui/deploy?app={n}\">Deploy a new release</a></div>"
        );
    }

    // Spinlets.
    let _ = write!(
        out,
        "<h2 id=\"spinlets-title\">Spinlets</h2><div id=\"spinlets\" data-live>"
    );
    if spinlets.is_empty() {
        out.push_str(
            "<p class=\"muted\">None running: the next request starts one (or press Start).</p>",
        );
    } else {
        out.push_str(
            "<div class=\"table-wrap cards\"><table aria-labelledby=\"spinlets-title\"><thead><tr>\
<th scope=\"col\">Spinlet</th><th scope=\"col\">State</th><th scope=\"col\">PID</th>\
<th scope=\"col\">Address</th><th scope=\"col\">Uptime</th><th scope=\"col\">Memory</th>\
<th scope=\"col\">CPU time</th><th scope=\"col\">Release</th>\
<th scope=\"col\">Restarts</th></tr></thead><tbody>",
        );
        let memory_limit = view["memory"].as_u64();
        let cpu_limit = view["cpu"].as_f64();
        for sp in &spinlets {
            let (memory, cpu) = match usage(sp.pid, sp.proc_start).await {
                Some((rss, cpu)) => (
                    match memory_limit {
                        Some(limit) => format!("{} of {}", mib(rss), mib(limit)),
                        None => mib(rss),
                    },
                    match cpu_limit {
                        Some(limit) => format!("{cpu:.1} s (limit {limit} core)"),
                        None => format!("{cpu:.1} s"),
                    },
                ),
                None => ("—".to_string(), "—".to_string()),
            };
            let _ = write!(
                out,
                "<tr><th scope=\"row\">{}</th><td data-label=\"State\">{}</td><td data-label=\"PID\">{}</td>\
<td data-label=\"Address\">{}:{}</td><td data-label=\"Uptime\">{}</td><td data-label=\"Memory\">{}</td>\
<td data-label=\"CPU time\">{}</td><td data-label=\"Release\">#{}</td><td data-label=\"Restarts\">{}</td></tr>",
                Esc(&sp.id),
                badge(sp.state.as_str()),
                sp.pid,
                Esc(&sp.host),
                sp.port,
                html::age(now.saturating_sub(sp.started)),
                Esc(&memory),
                Esc(&cpu),
                sp.release,
                sp.restarts,
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</div>");

    // Traffic, from the edge's counters.
    a.ctx.traffic.wanted(a.ctx.shutdown.clone());
    let _ = write!(
        out,
        "<h2 id=\"traffic-title\">Traffic (last hour)</h2><div id=\"traffic\" data-live>{}</div>",
        super::traffic::section(&a.ctx.traffic.source(), &a.ctx.traffic.series(name))
    );

    // Releases.
    let _ = write!(
        out,
        "<h2 id=\"releases-title\">Releases</h2><div id=\"releases\" data-live>"
    );
    let numbers = view["releases"].as_array().cloned().unwrap_or_default();
    let current = view["current_release"].as_u64();
    let pinned = reads::pinned_release(&a.ctx.data_dir, name).await;
    if numbers.is_empty() {
        out.push_str("<p class=\"muted\">No release yet: deploy one.</p>");
    } else {
        out.push_str(
            "<div class=\"table-wrap cards\"><table aria-labelledby=\"releases-title\"><thead><tr>\
<th scope=\"col\">Release</th><th scope=\"col\">Built</th><th scope=\"col\">Source</th>\
<th scope=\"col\">Build</th><th scope=\"col\"><span class=\"sr-only\">Action</span></th></tr></thead><tbody>",
        );
        for number in numbers.iter().rev().filter_map(Value::as_u64) {
            let info = reads::release_info(&a.ctx.data_dir, name, number)
                .await
                .unwrap_or(Value::Null);
            let built = info["created_ms"].as_u64().map_or_else(
                || "<span class=\"muted\">unknown</span>".to_string(),
                |ms| {
                    format!(
                        "<time datetime=\"{d}\" title=\"{d}\">{} ago</time>",
                        html::age(now.saturating_sub(ms)),
                        d = Esc(&html::date(ms))
                    )
                },
            );
            let source = info["source"]
                .as_str()
                .map(spinforge_state::config::redact_userinfo)
                .unwrap_or_default();
            let commit = info["source_commit"].as_str().unwrap_or("");
            let action = if Some(number) == current && Some(number) == pinned {
                "<span class=\"badge badge-ok\">serving</span> \
<span class=\"muted\">rolled back to: held until the next deploy</span>"
                    .to_string()
            } else if Some(number) == current {
                "<span class=\"badge badge-ok\">serving</span>".to_string()
            } else {
                format!(
                    "<form method=\"post\" action=\"/ui/apps/{n}/rollback\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"release\" value=\"{number}\">\
<button type=\"submit\" aria-label=\"Roll back to release {number}\">Roll back</button></form>"
                )
            };
            let _ = write!(
                out,
                "<tr data-release=\"{number}\"><th scope=\"row\">#{number}</th><td data-label=\"Built\">{built}</td>\
<td data-label=\"Source\"><span class=\"domain\">{}</span>{}</td><td data-label=\"Build\"><code>{}</code></td><td>{action}</td></tr>",
                Esc(super::shown(&source)),
                if commit.is_empty() {
                    String::new()
                } else {
                    format!(" <code>{}</code>", Esc(commit.get(..12).unwrap_or(commit)))
                },
                Esc(info["build_id"].as_str().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</div>");

    // Builds, with their step timings.
    out.push_str(&super::builds::section(a, name).await);

    // The live log.
    let _ = write!(
        out,
        "<h2 id=\"log-title\">Log</h2><p class=\"live-status\" id=\"log-status\" role=\"status\">Connecting…</p>\
<pre id=\"log\" class=\"log\" tabindex=\"0\" role=\"log\" aria-labelledby=\"log-title\" data-src=\"/ui/apps/{n}/logs\"></pre>"
    );
    Ok(out)
}

/// `POST /ui/apps/{app}/{start|stop|restart|rollback}`.
pub(super) async fn change(mut a: Asked<'_>, s: &Session, name: &str, action: &str) -> Resp {
    let form = match a.form().await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if let Some(refused) = refused(&a, s, form.get("csrf"), Some(name)) {
        return refused;
    }
    let back = format!("/ui/apps/{name}");
    let outcome = match action {
        _ if let Some(l) = Lifecycle::parse(action) => crate::apps::lifecycle(a.ctx, name, l).await,
        "rollback" => {
            let release = match form.get("release").map(str::parse::<u64>) {
                None => None,
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => {
                    return error_page(
                        StatusCode::BAD_REQUEST,
                        "Bad Request",
                        "`release` must be a release number.",
                        Some(&back),
                    );
                }
            };
            crate::apps::rollback_to(a.ctx, name, release).await
        }
        _ => {
            return error_page(
                StatusCode::NOT_FOUND,
                "No such action",
                "An app can be started, stopped, restarted or rolled back.",
                Some("/ui/"),
            );
        }
    };
    match outcome {
        Ok((_, note)) => {
            a.audit(
                Some(&s.caller),
                Some(name),
                StatusCode::SEE_OTHER,
                &format!("dashboard: {note}"),
            );
            let done = match note.strip_prefix("release ") {
                Some(n) => format!("rollback-{n}"),
                None => action.to_string(),
            };
            redirect(&format!("{back}?done={done}"), &[])
        }
        Err(p) => {
            a.audit(Some(&s.caller), Some(name), p.status, &p.detail);
            problem_page(p, Some(&back))
        }
    }
}

/// `GET /ui/apps/{app}/logs`: the API's log stream (the last lines, then new ones).
pub(super) async fn log(a: Asked<'_>, name: &str) -> Resp {
    let q = Query {
        follow: true,
        lines: Some(LOG_TAIL.into()),
    };
    match crate::sse::app_log(a.ctx, name, &q).await {
        Ok(resp) => resp,
        Err(p) => p.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_fixed_words() {
        assert_eq!(done_notice("done=stop").as_deref(), Some("Stopped."));
        assert_eq!(
            done_notice("x=1&done=rollback-3").as_deref(),
            Some("Rolled back: release 3 is served now.")
        );
        assert_eq!(done_notice("done=<script>"), None);
        assert_eq!(done_notice("done=rollback-x"), None);
        assert_eq!(done_notice(""), None);
    }
}
