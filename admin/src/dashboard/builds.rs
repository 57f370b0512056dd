//! Builds: an app's build history (the store keeps the newest per app) with each build's step
//! timings as a bar, and a build's own page with its log.

use super::html::{self, Esc, Nav};
use super::pages::signed_in_page;
use super::session::Session;
use super::{Asked, Resp, html as html_resp, problem_page};
use crate::problem::Problem;
use http::StatusCode;
use spinforge_state::records::{BuildState, BuildStatus, BuildStep};
use std::fmt::Write;

/// Builds listed on an app's page.
const LISTED: usize = 10;
/// Log lines a build's page shows (the store keeps up to 10,000).
const PAGE_LINES: usize = 2_000;

fn state_badge(state: BuildState) -> String {
    let class = match state {
        BuildState::Succeeded => "ok",
        BuildState::Failed => "bad",
        BuildState::Queued | BuildState::Running => "busy",
        BuildState::Cancelled => "idle",
    };
    format!(
        "<span class=\"badge badge-{class}\">{}</span>",
        state.as_str()
    )
}

/// `1.2 s`, `850 ms`, `3 min 5 s`.
fn took(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// The steps as words, for people and screen readers: `source 0.1 s · install 8.4 s`.
fn steps_text(steps: &[BuildStep]) -> String {
    steps
        .iter()
        .map(|s| format!("{} {}", s.name, took(s.ms)))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The steps as one bar, each step's share of the build its width (an SVG: no inline style,
/// which the Content-Security-Policy forbids). Names are the builder's fixed words.
pub(super) fn steps_bar(steps: &[BuildStep]) -> String {
    const W: f64 = 300.0;
    const H: f64 = 14.0;
    const COLORS: [&str; 5] = ["#0a58ca", "#6f42c1", "#198754", "#b35900", "#495057"];
    let total: u64 = steps.iter().map(|s| s.ms).sum();
    if steps.is_empty() {
        return "<span class=\"muted\">—</span>".into();
    }
    let mut rects = String::new();
    let mut x = 0.0;
    for (i, s) in steps.iter().enumerate() {
        // A step too short to see still gets a sliver.
        let w = if total == 0 {
            W / steps.len() as f64
        } else {
            (s.ms as f64 / total as f64 * W).max(1.5)
        };
        let _ = write!(
            rects,
            "<rect x=\"{x:.1}\" y=\"0\" width=\"{w:.1}\" height=\"{H}\" fill=\"{}\"><title>{}</title></rect>",
            COLORS[i % COLORS.len()],
            Esc(&format!("{} {}", s.name, took(s.ms)))
        );
        x += w;
    }
    let text = steps_text(steps);
    format!(
        "<svg class=\"steps\" viewBox=\"0 0 {w:.1} {H}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{label}\">{rects}</svg>\
<span class=\"steps-text\">{text}</span>",
        w = x.max(W),
        label = Esc(&format!("Build steps: {text}")),
        text = Esc(&text),
    )
}

/// How long a build took, queued to finished, or how long it has been running.
fn duration(b: &BuildStatus, now: u64) -> String {
    match (b.started, b.finished) {
        (Some(s), Some(f)) => took(f.saturating_sub(s)),
        (Some(s), None) => format!("{} so far", took(now.saturating_sub(s))),
        _ => "<span class=\"muted\">—</span>".into(),
    }
}

/// The "Builds" section of an app's page (live: it is swapped when a build's state changes).
pub(super) async fn section(a: &Asked<'_>, name: &str) -> String {
    let mut out = String::from("<h2 id=\"builds-title\">Builds</h2><div id=\"builds\" data-live>");
    let builds = match a.ctx.store.builds_of(name).await {
        Ok(b) => b,
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"muted\">The builds cannot be read now ({}).</p></div>",
                Esc(&e.to_string())
            );
            return out;
        }
    };
    if builds.is_empty() {
        out.push_str("<p class=\"muted\">No builds listed yet: a deploy or an edit of the app's source starts one.</p></div>");
        return out;
    }
    let now = spinforge_state::now_ms();
    out.push_str(
        "<div class=\"table-wrap cards\"><table aria-labelledby=\"builds-title\"><thead><tr>\
<th scope=\"col\">Build</th><th scope=\"col\">State</th><th scope=\"col\">Queued</th>\
<th scope=\"col\">Took</th><th scope=\"col\">Release</th><th scope=\"col\">Steps</th></tr></thead><tbody>",
    );
    for b in builds.iter().take(LISTED) {
        let _ = write!(
            out,
            "<tr data-build=\"{id}\"><th scope=\"row\"><a href=\"/ui/builds/{id}\"><code>{id}</code></a></th>\
<td data-label=\"State\">{}</td><td data-label=\"Queued\">{} ago</td><td data-label=\"Took\">{}</td>\
<td data-label=\"Release\">{}</td><td data-label=\"Steps\">{}</td></tr>",
            state_badge(b.state),
            html::age(now.saturating_sub(b.queued)),
            duration(b, now),
            b.release
                .map_or_else(|| "—".to_string(), |r| format!("#{r}")),
            steps_bar(&b.steps),
            id = Esc(&b.id),
        );
    }
    out.push_str("</tbody></table></div></div>");
    out
}

/// `GET /ui/builds/{id}`: a build's state, steps and log.
pub(super) async fn page(a: Asked<'_>, s: &Session, id: &str) -> Resp {
    match render(&a, id).await {
        Ok(main) => html_resp(
            StatusCode::OK,
            signed_in_page(s, &format!("Build {id}"), Nav::None, &main),
        ),
        Err(p) => problem_page(p, Some("/ui/")),
    }
}

async fn render(a: &Asked<'_>, id: &str) -> Result<String, Problem> {
    crate::reads::build_id(id)?;
    let Some(b) = a.ctx.store.build(id).await? else {
        return Err(Problem::not_found(format!(
            "there is no build {} (a finished build is kept for 7 days)",
            super::shown(id)
        )));
    };
    let now = spinforge_state::now_ms();
    let mut out = String::new();
    let _ = write!(
        out,
        "<p><a href=\"/ui/apps/{app}\">← {app}</a></p><h1>Build <code>{id}</code></h1>\
<div id=\"build\" data-live><dl class=\"facts\"><dt>State</dt><dd>{}</dd><dt>Queued</dt><dd>{} ago</dd>\
<dt>Took</dt><dd>{}</dd><dt>Release</dt><dd>{}</dd><dt>Steps</dt><dd>{}</dd></dl>",
        state_badge(b.state),
        html::age(now.saturating_sub(b.queued)),
        duration(&b, now),
        b.release
            .map_or_else(|| "—".to_string(), |r| format!("#{r}")),
        steps_bar(&b.steps),
        app = Esc(&b.app),
        id = Esc(&b.id),
    );
    if let Some(e) = &b.error {
        // As the API shows it: no URL credentials.
        let e = spinforge_state::config::redact_userinfo(e);
        let _ = write!(out, "<p class=\"error\">{}</p>", Esc(&e));
    }
    out.push_str("</div><h2 id=\"log-title\">Log</h2>");
    if b.state.is_final() {
        // All of it is there: written once, as text.
        let lines = a.ctx.store.build_log(id, None, PAGE_LINES).await?;
        out.push_str(
            "<pre id=\"build-log\" class=\"log\" tabindex=\"0\" aria-labelledby=\"log-title\">",
        );
        for l in &lines {
            let _ = writeln!(out, "{}", Esc(&l.line));
        }
        out.push_str("</pre>");
    } else {
        let _ = write!(
            out,
            "<p class=\"live-status\" id=\"log-status\" role=\"status\">Connecting…</p>\
<pre id=\"build-log\" class=\"log\" tabindex=\"0\" role=\"log\" aria-labelledby=\"log-title\" data-src=\"/ui/builds/{}/log\"></pre>",
            Esc(&b.id)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, ms: u64) -> BuildStep {
        BuildStep {
            name: name.into(),
            ms,
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(took(850), "850 ms");
        assert_eq!(took(8_400), "8.4 s");
        assert_eq!(took(185_000), "3 min 5 s");
    }

    #[test]
    fn the_bar_splits_by_share_and_says_it_in_words() {
        let bar = steps_bar(&[
            step("source", 100),
            step("install", 300),
            step("compile", 600),
        ]);
        assert!(bar.contains("width=\"30.0\""), "{bar}");
        assert!(bar.contains("width=\"90.0\""), "{bar}");
        assert!(bar.contains("width=\"180.0\""), "{bar}");
        assert!(
            bar.contains(
                "aria-label=\"Build steps: source 100 ms · install 300 ms · compile 600 ms\""
            ),
            "{bar}"
        );
        assert!(steps_bar(&[]).contains('—'));
    }
}
