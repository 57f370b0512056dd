//! Automatic HTTPS end to end: the real `spinforge` binary, a real Pebble CA (with its fake DNS)
//! on ephemeral ports, real Node apps, real TLS clients that trust only Pebble's issuing root.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use support::pebble::{Pebble, PebbleOptions};
use support::spinforge::{Spinforge, Workspace, echo_app, port_block};
use support::{eventually, free_port};

/// How long issuance may take end to end (Pebble issues in well under a second here).
const ISSUE: Duration = Duration::from_secs(45);

struct Ports {
    http: u16,
    https: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            http: free_port(),
            https: free_port(),
        }
    }
    fn https_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.https).into()
    }
}

fn config(
    ws: &Workspace,
    name: &str,
    ports: &Ports,
    pebble: &Pebble,
    extra_top: &str,
    acme_extra: &str,
    apps: &str,
) -> PathBuf {
    let yaml = format!(
        "{extra_top}edge:\n  listen_http: 127.0.0.1:{}\n  listen_https: 127.0.0.1:{}\n  grace: 2s\ntls:\n  acme:\n    directory: {}\n    ca_bundle: {}\n    email: ops@example.com\n{acme_extra}supervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{apps}",
        ports.http,
        ports.https,
        pebble.directory(),
        pebble.tls_ca().display(),
        port_block()
    );
    ws.write(name, &yaml)
}

/// An HTTPS client that trusts only `root_pem` and sends `domain` to `addr` (so SNI is `domain`).
fn https_client(root_pem: &str, domain: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).expect("root"))
        .resolve(domain, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .expect("client")
}

/// GETs `https://{domain}:{port}{path}` until the certificate verifies; returns the response.
async fn until_trusted(
    root: &str,
    domain: &str,
    addr: SocketAddr,
    path: &str,
) -> reqwest::Response {
    let client = https_client(root, domain, addr);
    let url = format!("https://{domain}:{}{path}", addr.port());
    eventually(
        ISSUE,
        format!("{url} answers with a trusted certificate"),
        || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.ok() }
        },
    )
    .await
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificates_by_sni_with_redirect_hsts_and_h2() {
    let ports = Ports::new();
    let pebble = Pebble::start(ports.http, ports.https, &PebbleOptions::default());
    let ws = Workspace::new();
    let apps = echo_app(&ws, "alpha", "alpha.test", "")
        + &echo_app(&ws, "beta", "beta.test", "")
        + &echo_app(&ws, "plain", "plain.test", "    tls: off\n");
    let path = config(&ws, "spinforge.yaml", &ports, &pebble, "", "", &apps);
    let sf = Spinforge::start(&ws, "up", &path, Some(([127, 0, 0, 1], ports.http).into()));
    let root = pebble.issuing_root();

    // Each name gets its own certificate, chosen by SNI, that verifies to Pebble's root; h2 is
    // negotiated; the app sees X-Forwarded-Proto: https; HSTS is set.
    for (domain, app) in [("alpha.test", "alpha"), ("beta.test", "beta")] {
        let r = until_trusted(&root, domain, ports.https_addr(), "/x?y=1").await;
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{domain}");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000")
        );
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["app"], app);
        assert_eq!(body["forwarded_proto"], "https");
        assert_eq!(body["path"], "/x?y=1");
        let copy = ws
            .data_dir()
            .join("certs")
            .join(domain)
            .join("fullchain.pem");
        assert!(copy.is_file(), "a copy on disk at {}", copy.display());
    }

    // Plain HTTP to a TLS app: 308 to HTTPS with path and query kept.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client");
    let r = plain
        .get(format!("http://127.0.0.1:{}/a/b?c=d", ports.http))
        .header("host", "alpha.test")
        .send()
        .await
        .expect("plain request");
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(format!("https://alpha.test:{}/a/b?c=d", ports.https).as_str())
    );
    // An unknown ACME token is a 404, not a redirect.
    let r = plain
        .get(format!(
            "http://127.0.0.1:{}/.well-known/acme-challenge/nope",
            ports.http
        ))
        .header("host", "alpha.test")
        .send()
        .await
        .expect("plain request");
    assert_eq!(r.status(), 404);
    // `tls: off` stays plain, and its name gets no TLS handshake at all; nor does an unknown one.
    let r = plain
        .get(format!("http://127.0.0.1:{}/", ports.http))
        .header("host", "plain.test")
        .send()
        .await
        .expect("plain request");
    assert_eq!(r.status(), 200);
    for name in ["plain.test", "unknown.test"] {
        let c = https_client(&root, name, ports.https_addr());
        let e = c
            .get(format!("https://{name}:{}/", ports.https))
            .send()
            .await
            .expect_err("no certificate for this name");
        assert!(e.is_connect() || e.is_request(), "{name}: {e}");
    }
    let log = sf.log_text();
    assert_eq!(count(&log, "certificate issued"), 2, "{log}");
}
