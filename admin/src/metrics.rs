//! `/metrics`: admin API requests counted by route and status, in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// (route, status) → requests. Routes are a fixed set of names, so this stays small.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl Metrics {
    pub fn count(&self, route: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((route, status)).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from(
            "# HELP spinforge_admin_requests_total Admin API requests by route and status.\n# TYPE spinforge_admin_requests_total counter\n",
        );
        for ((route, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "spinforge_admin_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}
