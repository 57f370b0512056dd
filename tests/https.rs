//! Automatic HTTPS end to end: the real `spinforge` binary, a real Pebble CA (with its fake DNS)
//! on ephemeral ports, real Node apps, real TLS clients that trust only Pebble's issuing root.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use support::pebble::{Pebble, PebbleOptions};
use support::spinforge::{Spinforge, Workspace, echo_app, port_block};
use support::{RedisServer, eventually, free_port};

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

    // `spinforge certs` lists them (from the disk copies: this config has no Redis).
    let out = std::process::Command::new(support::spinforge::binary())
        .args(["certs", "--config"])
        .arg(&path)
        .output()
        .expect("spinforge certs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = |d: &str| {
        text.lines()
            .find(|l| l.starts_with(d))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        line("alpha.test").contains("acme") && line("alpha.test").contains("days"),
        "{text}"
    );
    assert!(line("beta.test").contains("acme"), "{text}");
    assert!(line("plain.test").contains("off"), "{text}");
}

/// The serial number of the certificate served for `domain` (via `openssl s_client`).
fn served_serial(domain: &str, addr: SocketAddr) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {domain} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn one_app_up(
    ws: &Workspace,
    ports: &Ports,
    pebble: &Pebble,
    extra_top: &str,
    acme_extra: &str,
    domains: &str,
) -> Spinforge {
    let apps = echo_app(ws, "alpha", domains, "");
    let path = config(
        ws,
        "spinforge.yaml",
        ports,
        pebble,
        extra_top,
        acme_extra,
        &apps,
    );
    Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], ports.http).into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_without_port_80() {
    let ports = Ports::new();
    // Pebble's HTTP-01 port points nowhere: only TLS-ALPN-01 on the HTTPS port can succeed.
    let pebble = Pebble::start(free_port(), ports.https, &PebbleOptions::default());
    let ws = Workspace::new();
    let sf = one_app_up(
        &ws,
        &ports,
        &pebble,
        "",
        "    challenge: tls-alpn-01\n",
        "alpn.test",
    );
    let root = pebble.issuing_root();
    let r = until_trusted(&root, "alpn.test", ports.https_addr(), "/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let log = sf.log_text();
    assert!(log.contains("TlsAlpn01"), "{log}");
    assert_eq!(count(&log, "certificate issued"), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_short_validity_swaps_the_served_certificate() {
    let ports = Ports::new();
    // 12 s certificates: renewed when 4 s are left.
    let opts = PebbleOptions {
        validity_s: Some(12),
        always_valid: true,
        ..PebbleOptions::default()
    };
    let pebble = Pebble::start(ports.http, ports.https, &opts);
    let ws = Workspace::new();
    let sf = one_app_up(&ws, &ports, &pebble, "", "", "renew.test");
    let root = pebble.issuing_root();
    until_trusted(&root, "renew.test", ports.https_addr(), "/").await;
    let first = served_serial("renew.test", ports.https_addr());
    assert!(first.starts_with("serial="), "{first}");
    eventually(
        Duration::from_secs(30),
        "the certificate is renewed",
        || async { (count(&sf.log_text(), "certificate issued") >= 2).then_some(()) },
    )
    .await;
    assert!(sf.log_text().contains("due for renewal"));
    // The new one serves on the next handshake, without a restart.
    let second = eventually(
        Duration::from_secs(5),
        "the new certificate serves",
        || async {
            let s = served_serial("renew.test", ports.https_addr());
            (s.starts_with("serial=") && s != first).then_some(s)
        },
    )
    .await;
    assert_ne!(first, second);
    let r = until_trusted(&root, "renew.test", ports.https_addr(), "/").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_rejecting_half_the_nonces_still_issues() {
    let ports = Ports::new();
    let opts = PebbleOptions {
        nonce_reject: 50,
        always_valid: true,
        ..PebbleOptions::default()
    };
    let pebble = Pebble::start(ports.http, ports.https, &opts);
    let ws = Workspace::new();
    let _sf = one_app_up(&ws, &ports, &pebble, "", "", "nonce.test");
    let root = pebble.issuing_root();
    let r = until_trusted(&root, "nonce.test", ports.https_addr(), "/").await;
    assert_eq!(r.status(), 200);
    assert!(
        pebble.log().contains("reject 50% of good nonces"),
        "Pebble ran with nonce rejection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_that_cannot_be_validated_does_not_hold_up_others() {
    let ports = Ports::new();
    let pebble = Pebble::start(ports.http, ports.https, &PebbleOptions::default());
    // Pebble looks for bad.test's token where nothing listens.
    pebble.set_a("bad.test", "127.0.0.2");
    let ws = Workspace::new();
    let apps = echo_app(&ws, "alpha", "bad.test, good.test", "");
    let path = config(&ws, "spinforge.yaml", &ports, &pebble, "", "", &apps);
    let metrics_port = free_port();
    let yaml = std::fs::read_to_string(&path).expect("config").replacen(
        "  grace: 2s\n",
        &format!("  grace: 2s\n  metrics: 127.0.0.1:{metrics_port}\n"),
        1,
    );
    std::fs::write(&path, yaml).expect("config");
    let sf = Spinforge::start(&ws, "up", &path, Some(([127, 0, 0, 1], ports.http).into()));
    let root = pebble.issuing_root();
    let r = until_trusted(&root, "good.test", ports.https_addr(), "/").await;
    assert_eq!(r.status(), 200);
    eventually(ISSUE, "bad.test's failure is logged", || async {
        let log = sf.log_text();
        log.lines()
            .any(|l| l.contains("could not get a certificate") && l.contains("bad.test"))
            .then_some(())
    })
    .await;
    // /metrics counts the order that succeeded and the one that failed.
    let metrics = support::scrape(&format!("127.0.0.1:{metrics_port}")).await;
    let orders = |result: &str| -> u64 {
        let series = format!("spinforge_acme_orders_total{{result=\"{result}\"}}");
        support::metric_value(&metrics, &series)
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}")) as u64
    };
    assert_eq!(orders("succeeded"), 1, "{metrics}");
    assert!(orders("failed") >= 1, "{metrics}");
    // bad.test still answers HTTPS, with a certificate nobody trusts (self-signed).
    let e = https_client(&root, "bad.test", ports.https_addr())
        .get(format!("https://bad.test:{}/", ports.https))
        .send()
        .await
        .expect_err("self-signed is not trusted");
    assert!(e.is_connect(), "{e}");
    assert!(served_serial("bad.test", ports.https_addr()).starts_with("serial="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_redis_order_once_and_both_serve() {
    let redis = RedisServer::start();
    let (a, b) = (Ports::new(), Ports::new());
    // Pebble validates on edge a's ports; edge b learns the same challenges through Redis.
    let pebble = Pebble::start(a.http, a.https, &PebbleOptions::default());
    let ws = Workspace::new();
    let top = format!("state:\n  redis: {}\n", redis.url());
    let apps = echo_app(&ws, "alpha", "one.test, two.test", "");
    let path_a = config(&ws, "a.yaml", &a, &pebble, &top, "", &apps);
    let path_b = config(&ws, "b.yaml", &b, &pebble, &top, "", &apps);
    // Each its own data_dir, as on two machines: sharing one, the two supervisors' builds of the
    // app could remove each other's work folder (seen in CI: the build failed, the app held
    // every request and the check timed out).
    let yaml_b = std::fs::read_to_string(&path_b).expect("read b.yaml");
    assert!(yaml_b.contains("data_dir: ./data\n"), "{yaml_b}");
    let path_b = ws.write(
        "b.yaml",
        &yaml_b.replace("data_dir: ./data\n", "data_dir: ./data-b\n"),
    );
    let sf_a = Spinforge::start(&ws, "up", &path_a, Some(([127, 0, 0, 1], a.http).into()));
    let sf_b = Spinforge::start(&ws, "up", &path_b, Some(([127, 0, 0, 1], b.http).into()));
    let root = pebble.issuing_root();
    for domain in ["one.test", "two.test"] {
        for ports in [&a, &b] {
            let r = until_trusted(&root, domain, ports.https_addr(), "/").await;
            assert!(r.status().as_u16() < 600);
        }
        assert_eq!(
            served_serial(domain, a.https_addr()),
            served_serial(domain, b.https_addr()),
            "both edges serve the one certificate of {domain}"
        );
    }
    let logs = sf_a.log_text() + &sf_b.log_text();
    for domain in ["one.test", "two.test"] {
        let orders = logs
            .lines()
            .filter(|l| l.contains("ordering a certificate") && l.contains(domain))
            .count();
        assert_eq!(orders, 1, "one order for {domain}:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_certificate_is_replaced() {
    let redis = RedisServer::start();
    let ports = Ports::new();
    let opts = PebbleOptions {
        always_valid: true,
        ..PebbleOptions::default()
    };
    let pebble = Pebble::start(ports.http, ports.https, &opts);
    let ws = Workspace::new();
    let top = format!("state:\n  redis: {}\n", redis.url());
    let sf = one_app_up(&ws, &ports, &pebble, &top, "", "fix.test");
    let root = pebble.issuing_root();
    until_trusted(&root, "fix.test", ports.https_addr(), "/").await;
    let store = redis.store().await;
    let mut bad = store.cert("fix.test").await.expect("read").expect("stored");
    let good_chain = bad.chain_pem.clone();
    bad.chain_pem =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".into();
    store.put_cert(&bad).await.expect("corrupt it");
    let fixed = eventually(
        ISSUE,
        "a new certificate replaces the corrupt one",
        || async {
            let c = store.cert("fix.test").await.ok()??;
            (c.chain_pem != bad.chain_pem && c.chain_pem != good_chain).then_some(c)
        },
    )
    .await;
    assert!(fixed.chain_pem.contains("BEGIN CERTIFICATE"));
    let r = until_trusted(&root, "fix.test", ports.https_addr(), "/").await;
    assert_eq!(r.status(), 200);
    let log = sf.log_text();
    assert!(log.contains("not usable; replacing it"), "{log}");
    assert_eq!(count(&log, "certificate issued"), 2, "{log}");
}

/// Makes a self-signed certificate for `name` at `dir/{cert,key}.pem` (`openssl`); returns the
/// serial as `openssl x509 -serial` prints it.
fn make_cert_files(dir: &std::path::Path, name: &str) -> String {
    let tmp = dir.join("new");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
        ])
        .arg("-keyout")
        .arg(tmp.join("key.pem"))
        .arg("-out")
        .arg(tmp.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Key first, then the certificate, each by rename: the edge never sees half a file.
    std::fs::rename(tmp.join("key.pem"), dir.join("key.pem")).expect("rename");
    std::fs::rename(tmp.join("cert.pem"), dir.join("cert.pem")).expect("rename");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_served_and_reloaded_when_they_change() {
    let ports = Ports::new();
    let ws = Workspace::new();
    let first = make_cert_files(ws.path(), "files.test");
    let apps = echo_app(
        &ws,
        "alpha",
        "files.test",
        "    tls: { cert: cert.pem, key: key.pem }\n",
    ) + &echo_app(&ws, "beta", "self.localhost", "");
    let metrics_port = free_port();
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{}\n  listen_https: 127.0.0.1:{}\n  metrics: 127.0.0.1:{metrics_port}\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{apps}",
        ports.http,
        ports.https,
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let sf = Spinforge::start(&ws, "up", &path, Some(([127, 0, 0, 1], ports.http).into()));
    assert_eq!(served_serial("files.test", ports.https_addr()), first);
    // A name no CA issues for gets a self-signed certificate (and no order is placed: the job
    // has nothing to do, so it never contacts the default CA).
    let stand_in = served_serial("self.localhost", ports.https_addr());
    assert!(stand_in.starts_with("serial="), "{stand_in}");
    // A trusted (user-provided) certificate means plain HTTP redirects.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{}/p?q", ports.http))
        .header("host", "files.test")
        .send()
        .await
        .expect("plain");
    assert_eq!(r.status(), 308);

    // New files: served on the next handshakes, without a restart.
    std::thread::sleep(Duration::from_millis(1100)); // a visibly newer mtime
    let second = make_cert_files(ws.path(), "files.test");
    assert_ne!(first, second);
    eventually(
        Duration::from_secs(10),
        "the new certificate file serves",
        || async { (served_serial("files.test", ports.https_addr()) == second).then_some(()) },
    )
    .await;
    let log = sf.log_text();
    assert!(log.contains("loaded certificate files"), "{log}");
    assert!(!log.contains("certificate job started"), "{log}");

    // Prometheus sees each served certificate's expiry, and the self-signed handshakes.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let expiry = metrics
        .lines()
        .find(|l| {
            l.starts_with(r#"spinforge_cert_expiry_seconds{domain="files.test",source="files"}"#)
        })
        .unwrap_or_else(|| panic!("no expiry for files.test:\n{metrics}"));
    let not_after: i64 = expiry
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    let now = spinforge_state::now_ms() as i64 / 1000;
    assert!(not_after > now, "{expiry}");
    assert!(
        metrics.contains("spinforge_tls_self_signed_handshakes_total ")
            && !metrics.contains("spinforge_tls_self_signed_handshakes_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_listener_caps_connections_per_ip_and_closes_silent_ones() {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    let ports = Ports::new();
    let ws = Workspace::new();
    let serial = make_cert_files(ws.path(), "files.test");
    let apps = echo_app(
        &ws,
        "alpha",
        "files.test",
        "    tls: { cert: cert.pem, key: key.pem }\n",
    );
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{}\n  listen_https: 127.0.0.1:{}\n  metrics: off\n  max_connections_per_ip: 3\n  header_timeout: 1s\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{apps}",
        ports.http,
        ports.https,
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let _sf = Spinforge::start(&ws, "up", &path, Some(([127, 0, 0, 1], ports.http).into()));
    eventually(Duration::from_secs(10), "HTTPS serves", || async {
        (served_serial("files.test", ports.https_addr()) == serial).then_some(())
    })
    .await;

    // Three silent connections are held; a fourth from the same address is closed at once,
    // before any handshake (not after the 10 s handshake timeout).
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(
            TcpStream::connect(ports.https_addr())
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(ports.https_addr())
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf))
        .await
        .expect("the connection over the cap is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    for s in &mut silent {
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                .await
                .is_err(),
            "connections within the cap stay open until the header timeout"
        );
    }
    // Silent ones are closed after the header timeout (1 s), far before the handshake timeout.
    let started = std::time::Instant::now();
    for s in &mut silent {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the edge")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // Their slots are free again: handshakes work.
    assert_eq!(served_serial("files.test", ports.https_addr()), serial);
}
