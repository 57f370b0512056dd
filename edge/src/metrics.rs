//! Prometheus metrics of the edge, kept in atomics: the request path never takes a lock or looks
//! up a map to count. Per-app series live in the app's [`AppRuntime`](crate::routing::AppRuntime)
//! (allocated on the app's first request, so 10,000 routes that see no traffic cost nothing), and
//! edge-wide ones in [`Metrics`]. [`serve`] answers `GET /metrics` on `edge.metrics` in the text
//! exposition format, walking the current routing table for the app names.

use crate::sync::Snapshot;
use spinforge_state::stop::CancellationToken;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Methods with their own series; the rest count as `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
/// Status classes; `none` is a request that got no response (the client went away first).
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
/// Request latency buckets (upper bounds, seconds).
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Cold-start duration buckets (upper bounds, seconds).
const COLD_BUCKETS: [f64; 9] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// Scrapes served at once; more wait (a scrape is quick).
const MAX_SCRAPES: usize = 8;
/// A scrape's request must arrive within this, and be at most [`MAX_REQUEST`] bytes.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8 * 1024;

/// The index of a method in [`METHODS`].
pub fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100),
        _ => 0,
    }
}

/// A histogram of atomics: one counter per bucket (not cumulative; exposition adds them up) and
/// the sum in microseconds.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// `N` buckets and +Inf.
    counts: [AtomicU64; 16],
    sum_us: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: &'static [f64; N]) -> Self {
        assert!(N < 16);
        Self {
            bounds,
            counts: [const { AtomicU64::new(0) }; 16],
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(N);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[N].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// One app's series.
#[derive(Debug)]
pub struct AppMetrics {
    requests: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    latency: Histogram<{ LATENCY_BUCKETS.len() }>,
    upstream_errors: AtomicU64,
    connect_failures: AtomicU64,
    rate_limited: AtomicU64,
    cold_starts: AtomicU64,
    cold_start: Histogram<{ COLD_BUCKETS.len() }>,
}

impl Default for AppMetrics {
    fn default() -> Self {
        Self {
            requests: [const { [const { AtomicU64::new(0) }; CLASSES.len()] }; METHODS.len()],
            latency: Histogram::new(&LATENCY_BUCKETS),
            upstream_errors: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            cold_start: Histogram::new(&COLD_BUCKETS),
        }
    }
}

impl AppMetrics {
    /// A finished request: `method` from [`method_index`], `status` 0 when nothing was answered.
    pub fn request(&self, method: usize, status: u16, took: Duration) {
        self.requests[method.min(METHODS.len() - 1)][class_index(status)]
            .fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took);
    }

    /// A request that failed because of the upstream (after connecting, or on the last attempt).
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// One failed connect attempt to an upstream (retried on the next one when there is one).
    pub fn connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused by a rate limit (for the rate limiter to call).
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The app was started for requests held here; `took` is how long the first of them waited.
    pub fn cold_start(&self, took: Duration) {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        self.cold_start.observe(took);
    }
}

/// Picks one counter of an app.
type Field = fn(&AppMetrics) -> &AtomicU64;

/// Edge-wide series, and the scrape output.
#[derive(Debug, Default)]
pub struct Metrics {
    open_connections: AtomicI64,
    open_websockets: AtomicI64,
    /// Requests no app took (unknown host, no Host), by status class.
    unrouted: [AtomicU64; CLASSES.len()],
    /// Requests the HTTP/1.1 fast path proxied (the rest took Pingora's full path).
    fast_path: AtomicU64,
    /// The certificates served, for their expiry (set once when the edge starts).
    pub tls: std::sync::OnceLock<Arc<crate::tls::TlsState>>,
}

impl Metrics {
    pub fn unrouted(&self, status: u16) {
        self.unrouted[class_index(status)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fast_path_request(&self) {
        self.fast_path.fetch_add(1, Ordering::Relaxed);
    }

    /// A downstream connection, counted as open until the guard drops.
    pub fn connection(self: &Arc<Self>) -> Gauge {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        Gauge {
            metrics: self.clone(),
            websocket: false,
        }
    }

    /// An upgraded (WebSocket) stream, counted as open until the guard drops.
    pub fn websocket(self: &Arc<Self>) -> Gauge {
        self.open_websockets.fetch_add(1, Ordering::Relaxed);
        Gauge {
            metrics: self.clone(),
            websocket: true,
        }
    }

    /// The text exposition of everything, with per-app series for the apps of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let table = snapshot.load_full();
        let mut apps: Vec<_> = table
            .apps()
            .filter_map(|e| e.runtime.metrics_if_used().map(|m| (&*e.name, m)))
            .collect();
        apps.sort_by_key(|(name, _)| *name);

        out.push_str("# HELP spinforge_requests_total Requests answered by the edge, by app, method and status class.\n# TYPE spinforge_requests_total counter\n");
        for (app, m) in &apps {
            for (mi, method) in METHODS.iter().enumerate() {
                for (ci, class) in CLASSES.iter().enumerate() {
                    let n = m.requests[mi][ci].load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "spinforge_requests_total{{app=\"{app}\",method=\"{method}\",status=\"{class}\"}} {n}"
                        );
                    }
                }
            }
        }
        for (ci, class) in CLASSES.iter().enumerate() {
            let n = self.unrouted[ci].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "spinforge_requests_total{{app=\"\",method=\"other\",status=\"{class}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP spinforge_request_duration_seconds Time from the request to the end of its response, by app.\n# TYPE spinforge_request_duration_seconds histogram\n");
        for (app, m) in &apps {
            m.latency.write(
                &mut out,
                "spinforge_request_duration_seconds",
                &format!("app=\"{app}\","),
            );
        }
        let counters: [(&str, &str, Field); 4] = [
            (
                "spinforge_upstream_errors_total",
                "Requests that failed because of the upstream (connect failure on the last try, reset, timeout).",
                |m| &m.upstream_errors,
            ),
            (
                "spinforge_upstream_connect_failures_total",
                "Failed connect attempts to upstreams, retried or not.",
                |m| &m.connect_failures,
            ),
            (
                "spinforge_rate_limited_total",
                "Requests refused by a rate limit.",
                |m| &m.rate_limited,
            ),
            (
                "spinforge_cold_starts_total",
                "Starts of an app that requests were held for.",
                |m| &m.cold_starts,
            ),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (app, m) in &apps {
                let _ = writeln!(
                    out,
                    "{name}{{app=\"{app}\"}} {}",
                    field(m).load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP spinforge_cold_start_duration_seconds How long the first request held for a cold app waited for it.\n# TYPE spinforge_cold_start_duration_seconds histogram\n");
        for (app, m) in &apps {
            m.cold_start.write(
                &mut out,
                "spinforge_cold_start_duration_seconds",
                &format!("app=\"{app}\","),
            );
        }
        let _ = writeln!(
            out,
            "# HELP spinforge_open_connections Open downstream connections.\n# TYPE spinforge_open_connections gauge\nspinforge_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP spinforge_fast_path_requests_total Requests proxied by the HTTP/1.1 fast path; the others (HTTPS, HTTP/2, upgrades, compressed answers, cold starts, the edge's own pages) took the full path.\n# TYPE spinforge_fast_path_requests_total counter\nspinforge_fast_path_requests_total {}",
            self.fast_path.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP spinforge_open_websockets Open upgraded (WebSocket) streams.\n# TYPE spinforge_open_websockets gauge\nspinforge_open_websockets {}",
            self.open_websockets.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP spinforge_routes Domains in the edge's routing table.\n# TYPE spinforge_routes gauge\nspinforge_routes {}",
            table.len()
        );
        if let Some(tls) = self.tls.get() {
            out.push_str("# HELP spinforge_cert_expiry_seconds When the certificate served for a domain expires (Unix time).\n# TYPE spinforge_cert_expiry_seconds gauge\n");
            for c in tls.cert_expiries() {
                let source = match c.source {
                    crate::tls::CertSource::Acme => "acme",
                    crate::tls::CertSource::Files => "files",
                    crate::tls::CertSource::SelfSigned => "self-signed",
                };
                let _ = writeln!(
                    out,
                    "spinforge_cert_expiry_seconds{{domain=\"{}\",source=\"{source}\"}} {}",
                    c.domain, c.not_after
                );
            }
            let _ = writeln!(
                out,
                "# HELP spinforge_tls_self_signed_handshakes_total TLS handshakes answered with a self-signed stand-in.\n# TYPE spinforge_tls_self_signed_handshakes_total counter\nspinforge_tls_self_signed_handshakes_total {}",
                tls.self_signed_handshakes()
            );
            // The ACME job runs in the same process as the edge that serves its certificates.
            let (succeeded, failed) = spinforge_acme::order_counts();
            let _ = writeln!(
                out,
                "# HELP spinforge_acme_orders_total ACME orders since start, by outcome.\n# TYPE spinforge_acme_orders_total counter\nspinforge_acme_orders_total{{result=\"succeeded\"}} {succeeded}\nspinforge_acme_orders_total{{result=\"failed\"}} {failed}"
            );
        }
        out
    }
}

/// Counts something as open while alive.
#[derive(Debug)]
pub struct Gauge {
    metrics: Arc<Metrics>,
    websocket: bool,
}

impl Drop for Gauge {
    fn drop(&mut self) {
        let g = if self.websocket {
            &self.metrics.open_websockets
        } else {
            &self.metrics.open_connections
        };
        g.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers `GET /metrics` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    snapshot: Arc<Snapshot>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (metrics, snapshot) = (metrics.clone(), snapshot.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ =
                tokio::time::timeout(SCRAPE_DEADLINE, scrape(stream, &metrics, &snapshot)).await;
        });
    }
}

async fn scrape(
    mut stream: TcpStream,
    metrics: &Metrics,
    snapshot: &Snapshot,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            return write(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let body = metrics.render(snapshot);
            write(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        (b"GET", _) => write(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await,
        _ => write(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn write(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics listener (non-blocking, for [`serve`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&LATENCY_BUCKETS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.write(&mut out, "x", "app=\"a\",");
        assert!(
            out.contains("x_bucket{app=\"a\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{app=\"a\",le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{app=\"a\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{app=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{app=\"a\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{app=\"a\"} 60.0305\n"), "{out}");
    }

    #[test]
    fn classes_and_methods() {
        assert_eq!(class_index(0), 0);
        assert_eq!(class_index(204), 2);
        assert_eq!(class_index(503), 5);
        assert_eq!(class_index(700), 0);
        assert_eq!(method_index(&http::Method::POST), 2);
        assert_eq!(method_index(&http::Method::TRACE), 7);
    }
}
