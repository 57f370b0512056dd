//! `data_dir/audit.log`: one JSON line per change asked of the API — when, who (the token's id),
//! what (method, path, app) and how it ended.

use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug)]
pub(crate) struct Audit {
    path: PathBuf,
    /// One writer at a time, so lines never interleave.
    lock: Mutex<()>,
}

#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub token: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub app: Option<&'a str>,
    pub status: u16,
    /// What happened, e.g. `build app-1-abc` or the problem's detail.
    pub result: &'a str,
}

impl Audit {
    pub fn new(path: PathBuf) -> Audit {
        Audit {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn record(&self, e: &Entry<'_>) {
        let line = json!({
            "time": httpdate::fmt_http_date(std::time::SystemTime::now()),
            "time_ms": spinforge_state::now_ms(),
            "token": e.token,
            "method": e.method,
            "path": e.path,
            "app": e.app,
            "status": e.status,
            "result": e.result,
        });
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(err) = written {
            tracing::error!(path = %self.path.display(), "cannot write the audit log: {err}");
        }
    }
}
