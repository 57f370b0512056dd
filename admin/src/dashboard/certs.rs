//! The certificates page: every domain of every app, where its certificate comes from, and
//! when the one in the store expires (dates only: keys and chains never leave, as in the API).

use super::html::{self, Esc, Nav};
use super::pages::{badge, signed_in_page};
use super::session::Session;
use super::{Asked, Resp, html as html_resp, problem_page};
use crate::problem::Problem;
use http::StatusCode;
use spinforge_state::config::{AppTls, acme_eligible};
use std::fmt::Write;

/// Days left under which a certificate is flagged (ACME renews at a third of the lifetime left).
const SOON_DAYS: i64 = 14;

/// Where `domain`'s certificate comes from.
pub(super) fn source(tls: &AppTls, domain: &str, stored: bool) -> String {
    match tls {
        AppTls::Off => "none: HTTP only (tls: off)".to_string(),
        AppTls::Files { cert, .. } => format!("files: {}", cert.display()),
        AppTls::Auto if !acme_eligible(domain) => "self-signed (no ACME for this name)".into(),
        AppTls::Auto if stored => "ACME".into(),
        AppTls::Auto => "ACME (none issued yet)".into(),
    }
}

/// A stored certificate's expiry: a badge with the days left, and the date.
pub(super) fn expiry(r: &spinforge_state::records::CertRecord, now_s: i64) -> String {
    let days = (r.not_after - now_s).div_euclid(86_400);
    let state = if days < 0 {
        badge("expired")
    } else if days < SOON_DAYS {
        format!("<span class=\"badge badge-busy\">{days} days left</span>")
    } else {
        format!("<span class=\"badge badge-ok\">{days} days left</span>")
    };
    let at = html::date(u64::try_from(r.not_after).unwrap_or(0) * 1000);
    format!("{state} <time datetime=\"{d}\">{d}</time>", d = Esc(&at))
}

/// `GET /ui/certs`.
pub(super) async fn page(a: Asked<'_>, s: &Session) -> Resp {
    match render(&a).await {
        Ok(main) => html_resp(
            StatusCode::OK,
            signed_in_page(s, "Certificates", Nav::Certs, &main),
        ),
        Err(p) => problem_page(p, Some("/ui/")),
    }
}

async fn render(a: &Asked<'_>) -> Result<String, Problem> {
    let mut apps = a.ctx.handle.apps().await?;
    apps.sort_by(|x, y| x.config.name.cmp(&y.config.name));
    let certs = a.ctx.store.certs().await?;
    let now_s = (spinforge_state::now_ms() / 1000) as i64;
    let mut out = String::from("<h1>Certificates</h1><div id=\"certs\" data-live>");
    let domains: usize = apps.iter().map(|x| x.config.domains.len()).sum();
    if domains == 0 {
        out.push_str(
            "<p class=\"muted\">No domains yet: an app's domains get certificates here once it exists.</p></div>",
        );
        return Ok(out);
    }
    out.push_str(
        "<div class=\"table-wrap cards\"><table><caption class=\"sr-only\">Certificates of every domain</caption><thead><tr>\
<th scope=\"col\">Domain</th><th scope=\"col\">App</th><th scope=\"col\">Source</th>\
<th scope=\"col\">Expires</th><th scope=\"col\">Issued</th></tr></thead><tbody>",
    );
    for app in &apps {
        let c = &app.config;
        for domain in &c.domains {
            let stored = certs.iter().find(|r| &r.domain == domain);
            let source = source(&c.tls, domain, stored.is_some());
            let (expires, issued) = match stored {
                Some(r) => (
                    expiry(r, now_s),
                    format!(
                        "<time datetime=\"{d}\">{d}</time>",
                        d = Esc(&html::date(r.issued_ms))
                    ),
                ),
                None => (
                    "<span class=\"muted\">—</span>".to_string(),
                    "<span class=\"muted\">—</span>".to_string(),
                ),
            };
            let _ = write!(
                out,
                "<tr data-domain=\"{d}\"><th scope=\"row\"><span class=\"domain\">{d}</span></th>\
<td data-label=\"App\"><a href=\"/ui/apps/{n}\">{n}</a></td><td data-label=\"Source\">{}</td>\
<td data-label=\"Expires\">{expires}</td><td data-label=\"Issued\">{issued}</td></tr>",
                Esc(&source),
                d = Esc(domain),
                n = Esc(&c.name),
            );
        }
    }
    out.push_str("</tbody></table></div></div>");
    Ok(out)
}
