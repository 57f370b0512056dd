//! HTML: every value from outside (app names, domains, log lines, env names, errors) goes
//! through [`Esc`], which escapes the five characters that matter in text and in quoted
//! attributes. Pages carry no inline script or style, so the Content-Security-Policy can forbid
//! both.

use std::fmt::{self, Display, Write};

/// `text`, escaped for HTML text and double- or single-quoted attribute values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// The version in asset URLs, so that a new binary's assets are fetched anew.
pub(crate) const ASSET_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the page frame needs to know.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub title: &'a str,
    /// The signed-in session's CSRF token: shown in the sign-out form and to the script. `None`
    /// on the sign-in page.
    pub csrf: Option<&'a str>,
    /// Which nav entry is the current page.
    pub nav: Nav,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    None,
    Overview,
    Deploy,
    Certs,
}

/// A whole page around `main` (already HTML).
pub(crate) fn page(frame: &Frame<'_>, main: &str) -> String {
    let mut out = String::with_capacity(main.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"same-origin\">\
<title>{title} · SpinForge</title>\
<link rel=\"stylesheet\" href=\"/ui/static/style.css?v={ASSET_VERSION}\">",
        title = Esc(frame.title)
    );
    if let Some(csrf) = frame.csrf {
        let _ = write!(
            out,
            "<meta name=\"csrf-token\" content=\"{}\">\
<script src=\"/ui/static/app.js?v={ASSET_VERSION}\" defer></script>",
            Esc(csrf)
        );
    }
    out.push_str(
        "</head><body><a class=\"skip\" href=\"#main\">Skip to content</a>\
<header class=\"top\"><a class=\"brand\" href=\"/ui/\">SpinForge</a>",
    );
    if let Some(csrf) = frame.csrf {
        let current = |n: Nav| {
            if frame.nav == n {
                " aria-current=\"page\""
            } else {
                ""
            }
        };
        let _ = write!(
            out,
            "<nav aria-label=\"Main\"><a href=\"/ui/\"{}>Overview</a><a href=\"/ui/deploy\"{}>Deploy</a><a href=\"/ui/certs\"{}>Certificates</a></nav>\
<form class=\"signout\" method=\"post\" action=\"/ui/logout\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<button type=\"submit\">Sign out</button></form>",
            current(Nav::Overview),
            current(Nav::Deploy),
            current(Nav::Certs),
            Esc(csrf)
        );
    }
    out.push_str("</header><main id=\"main\" tabindex=\"-1\">");
    out.push_str(main);
    out.push_str("</main></body></html>\n");
    out
}

/// An age in words: `42 s`, `5 min`, `3 h`, `2 days`.
pub(crate) fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// An absolute time for a `title`/`datetime`: the HTTP date format.
pub(crate) fn date(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_reads() {
        assert_eq!(
            Esc("<script>alert('x&y')</script>\"").to_string(),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;&quot;"
        );
        assert_eq!(Esc("plain ünïcode").to_string(), "plain ünïcode");
        assert_eq!(Esc("").to_string(), "");
    }

    #[test]
    fn ages() {
        assert_eq!(age(5_000), "5 s");
        assert_eq!(age(120_000), "2 min");
        assert_eq!(age(7_200_000), "2 h");
        assert_eq!(age(3 * 86_400_000), "3 days");
    }
}
