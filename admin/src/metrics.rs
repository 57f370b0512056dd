//! `/metrics`: admin API requests counted by route and status, in the OpenMetrics text format
//! written by `prometheus-client` (which escapes `\`, `"` and newlines in label values).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What `/metrics` answers with.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    /// A route's name (a fixed set, so the family stays small), never a path as sent.
    route: &'static str,
    status: u16,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Request, Counter>::default();
        // Counters are written with `_total` appended.
        registry.register(
            "spinforge_admin_requests",
            "Admin API requests by route and status",
            requests.clone(),
        );
        Metrics { registry, requests }
    }
}

impl Metrics {
    pub fn count(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&Request { route, status })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_and_status() {
        let m = Metrics::default();
        m.count("apps", 401);
        m.count("apps", 401);
        m.count("metrics", 200);
        let text = m.render();
        assert!(
            text.contains("# TYPE spinforge_admin_requests counter\n"),
            "{text}"
        );
        assert!(
            text.contains("spinforge_admin_requests_total{route=\"apps\",status=\"401\"} 2\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.count("a \"quoted\" C:\\path\nand a second line", 404);
        let text = m.render();
        assert!(
            text.contains(
                "spinforge_admin_requests_total{route=\"a \\\"quoted\\\" C:\\\\path\\nand a second line\",status=\"404\"} 1\n"
            ),
            "{text}"
        );
        // Every sample stays on one line.
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            1,
            "{text}"
        );
    }
}
