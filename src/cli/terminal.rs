//! What the CLI prints comes partly from apps — log lines, build output, failure reasons that
//! quote them — so control characters in it are shown, not obeyed: an app cannot move the
//! cursor, clear the screen, retitle the window, rewrite a line with a carriage return or reorder
//! text with bidirectional overrides in an operator's terminal (`journalctl` and `less` do the
//! same). Line ends and tabs pass; `spinforge logs --raw` prints lines as written.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character (C0 but `\n` and `\t`, DEL, C1) written as `\xNN` or
/// `\u{NNNN}`, and the bidirectional controls as `\u{NNNN}`.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            c if !hidden(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

fn hidden(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert!(matches!(
            visible("plain text\twith tab\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            visible("\x1b]0;pwned\x07\x1b[2Jhidden\rshown"),
            "\\x1b]0;pwned\\x07\\x1b[2Jhidden\\x0dshown"
        );
        assert_eq!(visible("a\u{9b}31mb\u{7f}"), "a\\u{009b}31mb\\x7f");
        assert_eq!(visible("user\u{202e}gnp.exe"), "user\\u{202e}gnp.exe");
        assert_eq!(visible("naïve ✓ 日本"), "naïve ✓ 日本");
    }
}
