//! `data_dir/audit.log`: one JSON line per change asked of the API — when, who (the token's id
//! and the client's address), what (method, path, app) and how it ended.
//!
//! Bounded, so that no client can fill the disk through it: long fields are cut (a line stays
//! under [`MAX_LINE`] bytes); lines of unauthenticated requests are rate-limited (at most
//! [`UNAUTHENTICATED_PER_SECOND`] a second, [`UNAUTHENTICATED_PER_CLIENT`] of them from one
//! address), those left out counted in the next line written (`not_recorded`); and the file is
//! rotated like the spinlet logs (`supervisor.logs`, keeping at least one old file).

use serde_json::json;
use spinforge_state::config::LogLimits;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest path and app name recorded; the rest is cut with a note of its length.
const MAX_PATH: usize = 256;
/// The longest result recorded (a problem's detail may quote the request).
const MAX_RESULT: usize = 512;
/// No line is longer (JSON escapes included).
pub(crate) const MAX_LINE: usize = 2048;
/// Unauthenticated requests recorded per second, from all clients together…
const UNAUTHENTICATED_PER_SECOND: u32 = 20;
/// …and from one client address.
const UNAUTHENTICATED_PER_CLIENT: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Audit {
    path: PathBuf,
    /// One writer at a time, so lines never interleave (and the budget is counted exactly).
    state: Mutex<Budget>,
}

/// What unauthenticated requests may still write in the current second, and the rotation
/// limits (`supervisor.logs`, which a reload may change).
#[derive(Debug)]
struct Budget {
    limits: LogLimits,
    window: Instant,
    written: u32,
    /// Lines written this second per client; at most [`UNAUTHENTICATED_PER_SECOND`] entries.
    per_client: HashMap<IpAddr, u32>,
    /// Lines left out since the last line written.
    not_recorded: u64,
}

#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub token: &'a str,
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub app: Option<&'a str>,
    pub status: u16,
    /// What happened, e.g. `build app-1-abc` or the problem's detail.
    pub result: &'a str,
    /// The request carried no valid token: its line is rate-limited.
    pub unauthenticated: bool,
}

impl Audit {
    pub fn new(path: PathBuf, limits: LogLimits) -> Audit {
        Audit {
            path,
            state: Mutex::new(Budget {
                limits: Self::kept(limits),
                window: Instant::now(),
                written: 0,
                per_client: HashMap::new(),
                not_recorded: 0,
            }),
        }
    }

    /// Rotating without keeping anything would throw the record away.
    fn kept(limits: LogLimits) -> LogLimits {
        LogLimits {
            keep: limits.keep.max(1),
            ..limits
        }
    }

    /// New rotation limits (a reload).
    pub fn set_limits(&self, limits: LogLimits) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).limits = Self::kept(limits);
    }

    pub fn record(&self, e: &Entry<'_>) {
        let mut budget = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if e.unauthenticated && !budget.admit(e.client) {
            if budget.not_recorded == 0 {
                tracing::warn!(
                    "audit log: more than {UNAUTHENTICATED_PER_SECOND} unauthenticated requests a second (or {UNAUTHENTICATED_PER_CLIENT} from one address): counting them instead of recording each"
                );
            }
            budget.not_recorded += 1;
            return;
        }
        let line = line(e, std::mem::take(&mut budget.not_recorded));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| {
                writeln!(f, "{line}")?;
                f.metadata()
            });
        match written {
            Ok(meta) if meta.len() >= budget.limits.max_size => {
                // Under the lock: no line is written during the copy, so none is lost.
                if let Err(err) =
                    spinforge_supervisor::logs::rotate_if_needed(&self.path, &budget.limits)
                {
                    tracing::error!(path = %self.path.display(), "cannot rotate the audit log: {err}");
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::error!(path = %self.path.display(), "cannot write the audit log: {err}")
            }
        }
    }
}

impl Budget {
    /// Whether an unauthenticated request from `client` may have its line now.
    fn admit(&mut self, client: IpAddr) -> bool {
        if self.window.elapsed() >= WINDOW {
            self.window = Instant::now();
            self.written = 0;
            self.per_client.clear();
        }
        if self.written >= UNAUTHENTICATED_PER_SECOND {
            return false;
        }
        let mine = self.per_client.entry(client).or_insert(0);
        if *mine >= UNAUTHENTICATED_PER_CLIENT {
            return false;
        }
        *mine += 1;
        self.written += 1;
        true
    }
}

/// The JSON line for `e`, never longer than [`MAX_LINE`].
fn line(e: &Entry<'_>, not_recorded: u64) -> String {
    let render = |max_result: usize| {
        let mut v = json!({
            "time": httpdate::fmt_http_date(std::time::SystemTime::now()),
            "time_ms": spinforge_state::now_ms(),
            "token": e.token,
            "client": e.client.to_string(),
            "method": clip(e.method, 16),
            "path": clip(e.path, MAX_PATH),
            "app": e.app.map(|a| clip(a, MAX_PATH)),
            "status": e.status,
            "result": clip(e.result, max_result),
        });
        if not_recorded > 0 {
            v["not_recorded"] = json!(not_recorded);
        }
        v.to_string()
    };
    let line = render(MAX_RESULT);
    if line.len() <= MAX_LINE {
        return line;
    }
    // Only escapes (a result full of control characters) get here.
    render(64)
}

/// `s` cut to at most `max` bytes (at a character boundary), with a note of what was cut.
fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…[{} more bytes]", &s[..cut], s.len() - cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, client: [u8; 4], unauthenticated: bool) -> Entry<'a> {
        Entry {
            token: if unauthenticated {
                "unauthenticated"
            } else {
                "abc123"
            },
            client: IpAddr::from(client),
            method: "POST",
            path,
            app: Some(path),
            status: if unauthenticated { 401 } else { 400 },
            result: path,
            unauthenticated,
        }
    }

    fn lines(dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                assert!(l.len() <= MAX_LINE, "{} bytes", l.len());
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
            })
            .collect()
    }

    #[test]
    fn long_fields_are_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::new(dir.path().join("audit.log"), LogLimits::default());
        let long = format!("/api/v1/apps/{}/deploy", "é".repeat(30_000));
        audit.record(&entry(&long, [10, 0, 0, 1], false));
        let control = "\u{1}".repeat(5000);
        audit.record(&Entry {
            result: &control,
            ..entry("/x", [10, 0, 0, 1], false)
        });
        let lines = lines(&dir);
        assert_eq!(lines.len(), 2);
        let path = lines[0]["path"].as_str().unwrap_or("");
        assert!(path.starts_with("/api/v1/apps/éé"), "{path}");
        assert!(path.ends_with("more bytes]"), "{path}");
        assert_eq!(lines[0]["client"], "10.0.0.1");
    }

    #[test]
    fn unauthenticated_lines_are_rate_limited_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::new(dir.path().join("audit.log"), LogLimits::default());
        // One address: a few lines a second.
        for _ in 0..100 {
            audit.record(&entry("/api/v1/apps/a/deploy", [10, 0, 0, 1], true));
        }
        assert_eq!(lines(&dir).len(), UNAUTHENTICATED_PER_CLIENT as usize);
        // Many addresses: a few more, up to the total.
        for i in 0..100u8 {
            audit.record(&entry("/api/v1/apps/a/deploy", [10, 0, 1, i], true));
        }
        assert_eq!(lines(&dir).len(), UNAUTHENTICATED_PER_SECOND as usize);
        // The token holder's lines are never left out, and carry the count of those that were.
        audit.record(&entry("/api/v1/apps/b/deploy", [10, 0, 0, 1], false));
        let all = lines(&dir);
        assert_eq!(all.len(), UNAUTHENTICATED_PER_SECOND as usize + 1);
        let left_out = 200 - UNAUTHENTICATED_PER_SECOND as u64;
        let counted: u64 = all.iter().filter_map(|l| l["not_recorded"].as_u64()).sum();
        assert_eq!(counted, left_out);
        assert!(
            all.last()
                .is_some_and(|l| l["not_recorded"].as_u64() > Some(0))
        );
        // The next second has a budget again.
        audit.state.lock().unwrap_or_else(|p| p.into_inner()).window = Instant::now()
            .checked_sub(WINDOW)
            .expect("a second after boot");
        audit.record(&entry("/api/v1/apps/a/deploy", [10, 0, 0, 1], true));
        assert_eq!(lines(&dir).len(), UNAUTHENTICATED_PER_SECOND as usize + 2);
    }

    #[test]
    fn the_file_is_rotated_at_the_size_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = LogLimits {
            max_size: 4096,
            keep: 0,
        };
        let audit = Audit::new(dir.path().join("audit.log"), limits);
        for i in 0..200 {
            audit.record(&entry(
                &format!("/api/v1/apps/app{i}"),
                [10, 0, 0, 1],
                false,
            ));
        }
        let size = std::fs::metadata(dir.path().join("audit.log")).map_or(0, |m| m.len());
        assert!(size < 4096, "{size}");
        // keep: 0 still keeps one old file: an audit log is not thrown away.
        let old = std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap_or_default();
        assert!(old.len() >= 4096);
        assert!(!dir.path().join("audit.log.2").exists());
        let last = lines(&dir).pop().or_else(|| {
            old.lines()
                .last()
                .and_then(|l| serde_json::from_str(l).ok())
        });
        assert_eq!(
            last.map(|l| l["path"].clone()),
            Some(json!("/api/v1/apps/app199"))
        );
    }
}
