//! What a client can make the edge hold in memory with request heads it never finishes (issue
//! 13, finding 10): no connection buffers more than the largest `limits.headers` of any app,
//! plain or TLS. Before, heads over 16 KiB went to Pingora, which buffered up to 1 MiB each.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::spinforge::{Spinforge, Workspace, port_block};
use support::upstream::Upstream;
use support::{eventually, free_port};

/// Connections, each sending an unfinished head of a million bytes (under Pingora's own 1 MiB
/// limit, so that without a bound of ours it would be held whole).
const CLIENTS: usize = 64;
const HEAD: usize = 1_000_000;
/// What those 64 connections may add to the edge's resident memory: 64 × 32 KiB of heads, plus
/// TLS and allocator slack. Pingora's own limit (1 MiB each) would add 64 MiB or more.
const GROWTH_LIMIT_KIB: u64 = 16 * 1024;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples `pid`'s resident memory until dropped; the peak is kept.
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        PeakRss {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

fn config(ws: &Workspace, https: Option<u16>, upstream: SocketAddr) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let https = https
        .map(|p| format!("  listen_https: 127.0.0.1:{p}\n"))
        .unwrap_or_default();
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{port}\n{https}  metrics: off\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n  mem:\n    domains: [mem.localhost]\n    upstream: {upstream}\n    health_check: {{ path: /healthz }}\n",
        port_block()
    );
    (ws.write("spinforge.yaml", &yaml), port)
}

/// Each client writes a head that never ends and holds its connection until every client has
/// written (the edge's memory is sampled meanwhile, see [`PeakRss`]), then reads what came back:
/// the edge must have stopped reading at its limit and answered 431 (or closed, when the answer
/// met a full socket).
fn unfinished_heads(connect: impl Fn() -> Box<dyn ReadWrite> + Sync) -> Vec<String> {
    let written = std::sync::Barrier::new(CLIENTS + 1);
    let measured = std::sync::Barrier::new(CLIENTS + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = connect();
                    let mut head = b"GET / HTTP/1.1\r\nHost: mem.localhost\r\nX-Big: ".to_vec();
                    head.resize(HEAD, b'a');
                    let _ = s.write_all(&head); // fails once the edge has closed: expected
                    written.wait();
                    measured.wait();
                    let mut answer = Vec::new();
                    let _ = s.read_to_end(&mut answer);
                    String::from_utf8_lossy(&answer)
                        .lines()
                        .next()
                        .unwrap_or("closed")
                        .to_string()
                })
            })
            .collect();
        written.wait();
        // Every head is in; the edge has had a moment to read what it would.
        std::thread::sleep(Duration::from_millis(500));
        measured.wait();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

fn plain(addr: SocketAddr) -> Box<dyn ReadWrite> {
    Box::new(tcp(addr))
}

/// A TLS client that trusts anything (the edge serves `*.localhost` a self-signed certificate).
fn tls(addr: SocketAddr) -> Box<dyn ReadWrite> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("mem.localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("tls client");
    Box::new(rustls::StreamOwned::new(conn, tcp(addr)))
}

async fn edge_with(ws: &Workspace, https: bool, upstream: &Upstream) -> (Spinforge, u16) {
    let https_port = https.then(free_port);
    let (path, port) = config(ws, https_port, upstream.addr);
    let sf = Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], port).into()));
    let http = sf.client();
    eventually(
        Duration::from_secs(20),
        "the upstream is routed",
        || async { (http.fetch("mem.localhost", "/").await.status == 200).then_some(()) },
    )
    .await;
    (sf, https_port.unwrap_or(port))
}

fn check(kind: &str, answers: &[String], before: u64, peak: u64) {
    let growth = peak.saturating_sub(before);
    eprintln!("{kind}: {CLIENTS} unfinished 1 MB heads: RSS {before} KiB -> peak {peak} KiB");
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "{kind}: {CLIENTS} unfinished heads grew the edge by {growth} KiB (limit {GROWTH_LIMIT_KIB} KiB)"
    );
    for a in answers {
        assert!(
            a.starts_with("HTTP/1.1 431") || a == "closed",
            "{kind}: an unfinished 1 MiB head got `{a}`"
        );
    }
    assert!(
        answers.iter().any(|a| a.starts_with("HTTP/1.1 431")),
        "{kind}: the edge answers 431 once a head passes the limit: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_heads_cost_at_most_the_header_limit_per_connection() {
    let upstream = Upstream::start("mem").await;
    let ws = Workspace::new();
    let (sf, port) = edge_with(&ws, false, &upstream).await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let served = upstream.requests();
    let before = rss_kib(sf.pid());
    let peak = PeakRss::start(sf.pid());
    let answers = tokio::task::spawn_blocking(move || unfinished_heads(|| plain(addr)))
        .await
        .expect("clients");
    check("plain", &answers, before, peak.finish());
    assert_eq!(upstream.requests(), served, "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_heads_over_tls_cost_at_most_the_header_limit_per_connection() {
    let upstream = Upstream::start("mem").await;
    let ws = Workspace::new();
    let (sf, port) = edge_with(&ws, true, &upstream).await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let served = upstream.requests();
    // The handshakes' own memory (session caches, buffers) is not what is measured: warm up.
    let _ = tokio::task::spawn_blocking(move || {
        for _ in 0..CLIENTS {
            let mut s = tls(addr);
            let _ =
                s.write_all(b"GET / HTTP/1.1\r\nHost: mem.localhost\r\nConnection: close\r\n\r\n");
            let _ = s.read_to_end(&mut Vec::new());
        }
    })
    .await;
    let served = served + CLIENTS;
    let before = rss_kib(sf.pid());
    let peak = PeakRss::start(sf.pid());
    let answers = tokio::task::spawn_blocking(move || unfinished_heads(|| tls(addr)))
        .await
        .expect("clients");
    check("tls", &answers, before, peak.finish());
    assert_eq!(upstream.requests(), served, "nothing reached the app");
}
