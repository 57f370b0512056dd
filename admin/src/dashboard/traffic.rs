//! Per-app traffic for the dashboard: requests a second, latency (p50 and p99), 5xx answers and
//! cold starts over the last hour, from the edge's own counters at `edge.metrics` on this machine.
//!
//! A task reads the edge's `/metrics` every [`EVERY`] while a dashboard page was looked at in the
//! last [`IDLE`], and keeps [`KEEP`] points (an hour) for at most [`MAX_APPS`] apps; nothing runs
//! for API-only users. In split mode the edges may run elsewhere: when nothing answers at
//! `edge.metrics` here, the pages say so. The scrape is a plain HTTP/1.0 GET, at most
//! [`MAX_SCRAPE`] bytes, with a time limit.

use spinforge_state::stop::CancellationToken;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// How often the edge's counters are read.
pub(crate) const EVERY: Duration = Duration::from_secs(5);
/// Points kept per app: an hour.
pub(crate) const KEEP: usize = 3600 / 5;
/// Sampling stops when no page was looked at for this long.
const IDLE: Duration = Duration::from_secs(600);
/// Apps followed at once; more are left out of the charts.
const MAX_APPS: usize = 256;
/// The largest `/metrics` answer read.
const MAX_SCRAPE: usize = 4 << 20;
const SCRAPE_TIME: Duration = Duration::from_secs(3);

/// One app's counters as the edge shows them (cumulative).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    pub requests: u64,
    pub errors: u64,
    pub cold_starts: u64,
    /// `(le, cumulative count)` of the request duration histogram, in order.
    pub buckets: Vec<(f64, u64)>,
}

/// What one interval looked like for an app.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    pub at_ms: u64,
    /// Requests answered in the interval, and per second.
    pub requests: u64,
    pub rps: f64,
    /// Upper bounds of the histogram buckets the median and the 99th percentile fell in
    /// (seconds); `None` without requests.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// 5xx answers in the interval.
    pub errors: u64,
    pub cold_starts: u64,
}

/// Whether the edge's counters can be read here.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    /// `edge.metrics` is off.
    Off,
    /// Not read yet.
    Waiting,
    Reading(SocketAddr),
    Failed(SocketAddr, String),
}

#[derive(Debug)]
pub(crate) struct Traffic {
    addr: Mutex<Option<SocketAddr>>,
    state: Mutex<State>,
    running: AtomicBool,
    /// When a page last wanted traffic (ms since the epoch).
    seen_ms: AtomicU64,
    /// Bumped after a reading in which some app had traffic: open pages show it.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    last: Option<(u64, HashMap<String, Counters>)>,
    series: HashMap<String, VecDeque<Point>>,
    source: Source,
}

impl Traffic {
    pub fn new(addr: Option<SocketAddr>) -> Traffic {
        Traffic {
            addr: Mutex::new(addr),
            state: Mutex::new(State {
                last: None,
                series: HashMap::new(),
                source: if addr.is_some() {
                    Source::Waiting
                } else {
                    Source::Off
                },
            }),
            running: AtomicBool::new(false),
            seen_ms: AtomicU64::new(0),
            changed: watch::channel(0).0,
        }
    }

    /// `edge.metrics` after a reload.
    pub fn set_addr(&self, addr: Option<SocketAddr>) {
        *self.addr.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// A page shows traffic: sampling starts (or goes on).
    pub fn wanted(self: &Arc<Self>, shutdown: CancellationToken) {
        self.seen_ms
            .store(spinforge_state::now_ms(), Ordering::Relaxed);
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let idle =
                    spinforge_state::now_ms().saturating_sub(me.seen_ms.load(Ordering::Relaxed));
                if idle > IDLE.as_millis() as u64 {
                    break;
                }
                me.sample().await;
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            me.running.store(false, Ordering::Release);
        });
    }

    async fn sample(&self) {
        let addr = *self.addr.lock().unwrap_or_else(|p| p.into_inner());
        let Some(addr) = addr else {
            self.lock().source = Source::Off;
            return;
        };
        let now = spinforge_state::now_ms();
        match scrape(addr).await {
            Ok(text) => {
                let counters = parse(&text);
                let active = {
                    let mut s = self.lock();
                    // Figures are differences: the first reading gives none yet.
                    s.source = if s.last.is_some() {
                        Source::Reading(addr)
                    } else {
                        Source::Waiting
                    };
                    s.add(now, counters)
                };
                if active {
                    self.changed.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => {
                let mut s = self.lock();
                s.source = Source::Failed(addr, e);
                // A gap: the next reading starts a new interval.
                s.last = None;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes after each reading with traffic.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn source(&self) -> Source {
        self.lock().source.clone()
    }

    /// The last hour of `app`, oldest first.
    pub fn series(&self, app: &str) -> Vec<Point> {
        self.lock()
            .series
            .get(app)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl State {
    /// Adds a reading; whether any app had traffic since the last one.
    fn add(&mut self, now: u64, counters: HashMap<String, Counters>) -> bool {
        let mut active = false;
        if let Some((then, before)) = &self.last {
            let secs = (now.saturating_sub(*then) as f64 / 1000.0).max(0.001);
            for (app, c) in &counters {
                if !self.series.contains_key(app) && self.series.len() >= MAX_APPS {
                    continue;
                }
                // An app new to the edge (or a restarted edge) starts from zero.
                let zero = Counters::default();
                let b = before
                    .get(app)
                    .filter(|b| b.requests <= c.requests)
                    .unwrap_or(&zero);
                let requests = c.requests.saturating_sub(b.requests);
                let point = Point {
                    at_ms: now,
                    requests,
                    rps: requests as f64 / secs,
                    p50: quantile(&b.buckets, &c.buckets, 0.50),
                    p99: quantile(&b.buckets, &c.buckets, 0.99),
                    errors: c.errors.saturating_sub(b.errors),
                    cold_starts: c.cold_starts.saturating_sub(b.cold_starts),
                };
                active |= point.requests > 0 || point.cold_starts > 0;
                let s = self.series.entry(app.clone()).or_default();
                s.push_back(point);
                while s.len() > KEEP {
                    s.pop_front();
                }
            }
            // Apps the edge no longer knows go once their hour is over.
            let horizon = now.saturating_sub(KEEP as u64 * EVERY.as_millis() as u64);
            self.series
                .retain(|_, s| s.back().is_some_and(|p| p.at_ms >= horizon));
        }
        self.last = Some((now, counters));
        active
    }
}

/// The upper bound of the bucket where quantile `q` of the requests between two readings fell.
fn quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let delta = |le: f64, n: u64| {
        let was = before.iter().find(|(l, _)| *l == le).map_or(0, |(_, c)| *c);
        n.saturating_sub(was)
    };
    let total = after.last().map(|(le, n)| delta(*le, *n))?;
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    after
        .iter()
        .find(|(le, n)| delta(*le, *n) >= want)
        .map(|(le, _)| *le)
}

/// `GET /metrics` from the edge.
async fn scrape(addr: SocketAddr) -> Result<String, String> {
    let read = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n")
            .await
            .map_err(|e| format!("cannot ask: {e}"))?;
        let mut out = Vec::new();
        (&mut s)
            .take(MAX_SCRAPE as u64)
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        Ok::<_, String>(out)
    };
    let bytes = tokio::time::timeout(SCRAPE_TIME, read)
        .await
        .map_err(|_| format!("no answer within {}s", SCRAPE_TIME.as_secs()))??;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").chars().take(80).collect());
    }
    Ok(body.to_string())
}

/// The value of label `name` in `{…}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// Each app's counters from the edge's exposition text.
pub(crate) fn parse(text: &str) -> HashMap<String, Counters> {
    let mut out: HashMap<String, Counters> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(app) = label(labels, "app").filter(|a| !a.is_empty()) else {
            continue;
        };
        if !out.contains_key(app) && out.len() >= MAX_APPS {
            continue;
        }
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let n = v as u64;
        let c = out.entry(app.to_string()).or_default();
        match name {
            "spinforge_requests_total" => {
                c.requests += n;
                if label(labels, "status") == Some("5xx") {
                    c.errors += n;
                }
            }
            "spinforge_cold_starts_total" => c.cold_starts = n,
            "spinforge_request_duration_seconds_bucket" => {
                let le = match label(labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                c.buckets.push((le, n));
            }
            _ => {}
        }
    }
    for c in out.values_mut() {
        c.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// A duration for people: `12 ms`, `1.5 s`.
pub(crate) fn seconds(s: f64) -> String {
    if s.is_infinite() {
        "> 10 s".into()
    } else if s < 1.0 {
        format!("≤ {:.0} ms", s * 1000.0)
    } else {
        format!("≤ {s:.1} s")
    }
}

/// A line chart of `values` (oldest first) as inline SVG, `label` saying what it shows.
pub(crate) fn sparkline(values: &[f64], label: &str) -> String {
    const W: f64 = 360.0;
    const H: f64 = 48.0;
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let mut points = String::new();
    let step = (W - 6.0) / (KEEP.max(2) - 1) as f64;
    let offset = KEEP.saturating_sub(values.len());
    let mut last = None;
    for (i, v) in values.iter().enumerate() {
        let x = 3.0 + (offset + i) as f64 * step;
        let y = if max > 0.0 {
            H - v / max * (H - 6.0) - 3.0
        } else {
            H - 3.0
        };
        points.push_str(&format!("{x:.1},{y:.1} "));
        last = Some((x, y));
    }
    // The latest reading stands out: an hour's line starts as a dot at the right.
    let dot = last
        .map(|(x, y)| {
            format!(
                "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{y:.1}\" stroke=\"#0a58ca\" stroke-width=\"6\" stroke-linecap=\"round\" vector-effect=\"non-scaling-stroke\"/>"
            )
        })
        .unwrap_or_default();
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{}\">\
<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#f6f8fa\"/>\
<polyline points=\"{}\" fill=\"none\" stroke=\"#0a58ca\" stroke-width=\"1.5\" vector-effect=\"non-scaling-stroke\"/>{dot}</svg>",
        super::html::Esc(label),
        points.trim_end()
    )
}

/// The last hour in numbers.
struct Summary {
    requests: u64,
    rps_now: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: u64,
    cold_starts: u64,
}

fn summary(points: &[Point]) -> Summary {
    // Latency: the latest interval with requests in the last minute.
    let recent = points
        .iter()
        .rev()
        .take(60_000 / EVERY.as_millis() as usize)
        .find(|p| p.p99.is_some());
    Summary {
        requests: points.iter().map(|p| p.requests).sum(),
        rps_now: points.last().map_or(0.0, |p| p.rps),
        p50: recent.and_then(|p| p.p50),
        p99: recent.and_then(|p| p.p99),
        errors: points.iter().map(|p| p.errors).sum(),
        cold_starts: points.iter().map(|p| p.cold_starts).sum(),
    }
}

/// Why there are no numbers, when there are none.
fn missing(source: &Source, points: &[Point]) -> Option<String> {
    match source {
        Source::Off => Some("no traffic figures: edge.metrics is off".into()),
        Source::Failed(addr, why) => Some(format!(
            "no traffic figures: the edge's /metrics at {addr} does not answer here ({why})"
        )),
        Source::Waiting => Some(format!(
            "measuring: figures come within {} s",
            2 * EVERY.as_secs()
        )),
        Source::Reading(_) if points.is_empty() => Some("no requests in the last hour".into()),
        Source::Reading(_) => None,
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The overview's cell for an app.
pub(crate) fn cell(source: &Source, points: &[Point]) -> String {
    use super::html::Esc;
    if let Some(why) = missing(source, points) {
        return format!("<span class=\"muted\">{}</span>", Esc(&why));
    }
    let s = summary(points);
    format!(
        "{:.1} req/s<br><span class=\"muted\">{} in 1 h · p99 {} · {} · {}</span>",
        s.rps_now,
        s.requests,
        s.p99.map_or("—".into(), seconds),
        plural(s.errors, "5xx", "5xx"),
        plural(s.cold_starts, "cold start", "cold starts"),
    )
}

/// The app page's section: numbers and charts of the last hour.
pub(crate) fn section(source: &Source, points: &[Point]) -> String {
    use super::html::Esc;
    if let Some(why) = missing(source, points) {
        return format!("<p class=\"muted\">{}.</p>", Esc(&why));
    }
    let s = summary(points);
    let rps: Vec<f64> = points.iter().map(|p| p.rps).collect();
    let p99: Vec<f64> = points
        .iter()
        .map(|p| p.p99.filter(|v| v.is_finite()).unwrap_or(0.0) * 1000.0)
        .collect();
    let cold: Vec<f64> = points.iter().map(|p| p.cold_starts as f64).collect();
    let max = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    format!(
        "<dl class=\"facts traffic\">\
<dt>Requests</dt><dd>{} in the last hour; {:.1} a second now{}</dd>\
<dt>Latency</dt><dd>p50 {} · p99 {}{}</dd>\
<dt>5xx answers</dt><dd>{}</dd>\
<dt>Cold starts</dt><dd>{}{}</dd></dl>",
        s.requests,
        s.rps_now,
        sparkline(
            &rps,
            &format!(
                "Requests a second over the last hour, at most {:.1}",
                max(&rps)
            )
        ),
        s.p50.map_or("—".into(), seconds),
        s.p99.map_or("—".into(), seconds),
        sparkline(
            &p99,
            &format!(
                "p99 latency over the last hour, at most {:.0} ms",
                max(&p99)
            )
        ),
        s.errors,
        s.cold_starts,
        sparkline(&cold, "Cold starts over the last hour"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP x\n\
spinforge_requests_total{app=\"a\",method=\"GET\",status=\"2xx\"} 90\n\
spinforge_requests_total{app=\"a\",method=\"POST\",status=\"5xx\"} 10\n\
spinforge_requests_total{app=\"\",method=\"other\",status=\"4xx\"} 3\n\
spinforge_request_duration_seconds_bucket{app=\"a\",le=\"0.01\"} 50\n\
spinforge_request_duration_seconds_bucket{app=\"a\",le=\"0.1\"} 98\n\
spinforge_request_duration_seconds_bucket{app=\"a\",le=\"+Inf\"} 100\n\
spinforge_cold_starts_total{app=\"a\"} 2\n\
spinforge_cold_starts_total{app=\"b\"} 0\n";

    #[test]
    fn parses_the_edges_counters() {
        let c = parse(SCRAPE);
        let a = &c["a"];
        assert_eq!(a.requests, 100);
        assert_eq!(a.errors, 10);
        assert_eq!(a.cold_starts, 2);
        assert_eq!(a.buckets.len(), 3);
        assert_eq!(a.buckets[2].0, f64::INFINITY);
        assert!(c.contains_key("b"));
        assert!(!c.contains_key(""), "unrouted requests are no app");
    }

    #[test]
    fn points_are_deltas_between_readings() {
        let mut s = State {
            last: None,
            series: HashMap::new(),
            source: Source::Waiting,
        };
        assert!(!s.add(1_000, parse(SCRAPE)));
        assert!(s.series.is_empty(), "one reading is no interval");
        let later = SCRAPE
            .replace("status=\"2xx\"} 90", "status=\"2xx\"} 190")
            .replace("le=\"0.01\"} 50", "le=\"0.01\"} 60")
            .replace("le=\"0.1\"} 98", "le=\"0.1\"} 198")
            .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 200")
            .replace("{app=\"a\"} 2", "{app=\"a\"} 3");
        assert!(s.add(6_000, parse(&later)));
        let p = s.series["a"][0];
        assert_eq!(p.requests, 100);
        assert_eq!(p.rps, 20.0);
        assert_eq!(p.errors, 0);
        assert_eq!(p.cold_starts, 1);
        // 100 new requests: 10 under 10 ms, all of them under 100 ms.
        assert_eq!(p.p50, Some(0.1));
        assert_eq!(p.p99, Some(0.1));
        assert_eq!(s.series["b"][0].p50, None);
        let addr: SocketAddr = "127.0.0.1:9101".parse().unwrap();
        assert!(cell(&Source::Off, &[]).contains("edge.metrics is off"));
        assert!(cell(&Source::Waiting, &[]).contains("measuring"));
        assert!(cell(&Source::Reading(addr), &[]).contains("no requests"));
        assert!(cell(&Source::Failed(addr, "<x>".into()), &[]).contains("&lt;x&gt;"));
        let shown = cell(
            &Source::Reading(addr),
            &s.series["a"].iter().copied().collect::<Vec<_>>(),
        );
        assert!(shown.starts_with("20.0 req/s"), "{shown}");
        assert!(
            shown.contains("100 in 1 h") && shown.contains("1 cold start"),
            "{shown}"
        );
        let svg = sparkline(&[0.0, 1.0, 2.0], "<rate>");
        assert!(svg.contains("aria-label=\"&lt;rate&gt;\""));
        assert_eq!(seconds(0.1), "≤ 100 ms");
    }
}
