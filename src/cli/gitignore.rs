//! Enough of `.gitignore` for packing a source folder: `*`, `?`, `**`, `[...]`, `!` negation,
//! a trailing `/` for folders, and patterns anchored by a `/`. Each folder's `.gitignore`
//! applies below it; later patterns win.

use std::path::Path;

#[derive(Debug, Clone)]
pub struct Pattern {
    /// The folder (relative to the root, `/`-separated, empty for the root) it came from.
    base: String,
    glob: String,
    negate: bool,
    dir_only: bool,
    /// Matches the path relative to `base` (else: the name, at any depth).
    anchored: bool,
}

/// Reads `dir/.gitignore` (if any); `base` is `dir` relative to the root.
pub fn load(dir: &Path, base: &str) -> Vec<Pattern> {
    match std::fs::read_to_string(dir.join(".gitignore")) {
        Ok(text) => parse(&text, base),
        Err(_) => Vec::new(),
    }
}

pub fn parse(text: &str, base: &str) -> Vec<Pattern> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut p = line.trim_end();
        if p.is_empty() || p.starts_with('#') {
            continue;
        }
        let negate = p.starts_with('!');
        if negate {
            p = &p[1..];
        }
        let p = p.strip_prefix('\\').unwrap_or(p);
        let dir_only = p.ends_with('/');
        let p = p.trim_end_matches('/');
        if p.is_empty() {
            continue;
        }
        let anchored = p.contains('/');
        out.push(Pattern {
            base: base.to_string(),
            glob: p.trim_start_matches('/').to_string(),
            negate,
            dir_only,
            anchored,
        });
    }
    out
}

/// Whether `rel` (relative to the root, `/`-separated) is ignored by `patterns`.
pub fn ignored(patterns: &[Pattern], rel: &str, is_dir: bool) -> bool {
    let mut result = false;
    for p in patterns {
        if p.dir_only && !is_dir {
            continue;
        }
        let Some(under) = (if p.base.is_empty() {
            Some(rel)
        } else {
            rel.strip_prefix(&p.base).and_then(|r| r.strip_prefix('/'))
        }) else {
            continue;
        };
        let hit = if p.anchored {
            glob(p.glob.as_bytes(), under.as_bytes())
        } else {
            let name = under.rsplit('/').next().unwrap_or(under);
            glob(p.glob.as_bytes(), name.as_bytes())
        };
        if hit {
            result = !p.negate;
        }
    }
    result
}

/// Glob matching where `*` and `?` stay within one path segment and `**` crosses them.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            // `**/` also matches nothing at all.
            let rest = &p[2..];
            let rest_after_slash = rest.strip_prefix(b"/").unwrap_or(rest);
            if glob(rest_after_slash, s) {
                return true;
            }
            (0..s.len()).any(|i| glob(rest, &s[i + 1..]) || glob(rest_after_slash, &s[i + 1..]))
        }
        Some(b'*') => {
            if glob(&p[1..], s) {
                return true;
            }
            match s.first() {
                Some(c) if *c != b'/' => glob(p, &s[1..]),
                _ => false,
            }
        }
        Some(b'?') => matches!(s.first(), Some(c) if *c != b'/') && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(close) = p.iter().skip(1).position(|c| *c == b']').map(|i| i + 1) else {
                return s.first() == Some(&b'[') && glob(&p[1..], &s[1..]);
            };
            let Some(c) = s.first() else { return false };
            let mut set = &p[1..close];
            let negate = matches!(set.first(), Some(b'!' | b'^'));
            if negate {
                set = &set[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= (set[i]..=set[i + 2]).contains(c);
                    i += 3;
                } else {
                    hit |= set[i] == *c;
                    i += 1;
                }
            }
            hit != negate && *c != b'/' && glob(&p[close + 1..], &s[1..])
        }
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(text: &str, path: &str, dir: bool) -> bool {
        ignored(&parse(text, ""), path, dir)
    }

    #[test]
    fn patterns() {
        assert!(check("*.log", "a/b/c.log", false));
        assert!(!check("*.log", "a/b/c.txt", false));
        assert!(check("dist/", "dist", true));
        assert!(!check("dist/", "dist", false));
        assert!(check("/build", "build", true));
        assert!(!check("/build", "src/build", true));
        assert!(check("a/**/z", "a/b/c/z", false));
        assert!(check("a/**/z", "a/z", false));
        assert!(check("**/tmp", "x/y/tmp", true));
        assert!(check("*.log\n!keep.log", "x.log", false));
        assert!(!check("*.log\n!keep.log", "keep.log", false));
        assert!(check("file[0-9].txt", "file3.txt", false));
        assert!(!check("file[!0-9].txt", "file3.txt", false));
        assert!(!check("# comment\n", "# comment", false));
        assert!(check(".env*", ".env.local", false));
    }

    #[test]
    fn nested_files_apply_below_their_folder() {
        let p = parse("*.tmp", "sub");
        assert!(ignored(&p, "sub/x.tmp", false));
        assert!(!ignored(&p, "x.tmp", false));
    }
}
