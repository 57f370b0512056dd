//! A real Pebble (Let's Encrypt's test CA, Debian package `pebble`) with `pebble-challtestsrv` as
//! its DNS (every name → 127.0.0.1), all on ephemeral ports, killed on drop. Pebble validates
//! HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`: give it the edge's ports.

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct PebbleOptions {
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of nonces rejected (default 0 here).
    pub nonce_reject: u32,
    /// `certificateValidityPeriod` in seconds (Pebble's default: about 5 years).
    pub validity_s: Option<u64>,
    /// `PEBBLE_VA_ALWAYS_VALID=1`: skip validation (for tests not about it).
    pub always_valid: bool,
}

#[derive(Debug)]
pub struct Pebble {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    pub mgmt_port: u16,
    /// pebble-challtestsrv's management API (to change DNS answers).
    pub dns_mgmt_port: u16,
    children: Vec<Child>,
}

impl Pebble {
    pub fn start(http_port: u16, tls_port: u16, opts: &PebbleOptions) -> Pebble {
        assert!(
            Command::new("pebble").arg("-help").output().is_ok(),
            "pebble not found: run ./scripts/setup (apt-get install pebble)"
        );
        let dir = tempfile::Builder::new()
            .prefix("spinforge-pebble-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        sh(
            d,
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -keyout ca.key -out ca.pem -subj '/CN=pebble test TLS CA'",
        );
        sh(
            d,
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -subj /CN=localhost -out req.csr",
        );
        std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n").expect("ext");
        sh(
            d,
            "openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -out cert.pem -extfile ext.cnf",
        );
        let mut last = String::new();
        for _ in 0..5 {
            let (api_port, mgmt_port, dns_port, dns_mgmt) =
                (free_port(), free_port(), free_port(), free_port());
            let validity = opts
                .validity_s
                .map(|s| format!(",\n    \"certificateValidityPeriod\": {s}"))
                .unwrap_or_default();
            let config = format!(
                "{{\n  \"pebble\": {{\n    \"listenAddress\": \"127.0.0.1:{api_port}\",\n    \"managementListenAddress\": \"127.0.0.1:{mgmt_port}\",\n    \"certificate\": \"{c}\",\n    \"privateKey\": \"{k}\",\n    \"httpPort\": {http_port},\n    \"tlsPort\": {tls_port},\n    \"ocspResponderURL\": \"\",\n    \"externalAccountBindingRequired\": false{validity}\n  }}\n}}\n",
                c = d.join("cert.pem").display(),
                k = d.join("key.pem").display(),
            );
            std::fs::write(d.join("pebble-config.json"), config).expect("config");
            let dns = Command::new("pebble-challtestsrv")
                .args([
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                ])
                .args([
                    "-dns01",
                    &format!("127.0.0.1:{dns_port}"),
                    "-management",
                    &format!("127.0.0.1:{dns_mgmt}"),
                ])
                .stdout(log(d, "challtestsrv.log"))
                .stderr(log(d, "challtestsrv.log"))
                .spawn()
                .expect("start pebble-challtestsrv");
            let mut cmd = Command::new("pebble");
            cmd.arg("-config")
                .arg(d.join("pebble-config.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", opts.nonce_reject.to_string())
                .stdout(log(d, "pebble.log"))
                .stderr(log(d, "pebble.log"));
            if opts.always_valid {
                cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
            }
            let ca = cmd.spawn().expect("start pebble");
            let mut children = vec![dns, ca];
            if wait_ready(&mut children, d, api_port) {
                return Pebble {
                    dir,
                    api_port,
                    mgmt_port,
                    dns_mgmt_port: dns_mgmt,
                    children,
                };
            }
            last = std::fs::read_to_string(d.join("pebble.log")).unwrap_or_default();
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        panic!("pebble did not start: {last}");
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api_port)
    }

    /// The CA that signed Pebble's own HTTPS certificate (`tls.acme.ca_bundle`).
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root that issued certificates chain to (changes on every Pebble start).
    pub fn issuing_root(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(self.tls_ca())
            .arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .output()
            .expect("curl the issuing root");
        assert!(out.status.success(), "cannot fetch Pebble's root");
        String::from_utf8(out.stdout).expect("PEM")
    }

    /// Makes the fake DNS answer `ip` for `host` (e.g. an address where nothing listens, so
    /// that validation fails).
    pub fn set_a(&self, host: &str, ip: &str) {
        let body = format!("{{\"host\":\"{host}.\",\"addresses\":[\"{ip}\"]}}");
        let ok = Command::new("curl")
            .args(["-sf", "-X", "POST", "-d", &body])
            .arg(format!("http://127.0.0.1:{}/add-a", self.dns_mgmt_port))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot set the A record of {host}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_ready(children: &mut [Child], dir: &Path, api_port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if children
            .iter_mut()
            .any(|c| c.try_wait().ok().flatten().is_some())
        {
            return false;
        }
        let ok = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(dir.join("ca.pem"))
            .arg(format!("https://127.0.0.1:{api_port}/dir"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn log(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
        .into()
}

fn sh(dir: &Path, cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
