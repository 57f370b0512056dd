//! HTTPS: certificates chosen by SNI at handshake time from an in-memory table swapped atomically.
//!
//! - [`TlsPolicy`]: which names may be served over TLS and how their certificate is obtained
//!   (`tls: auto | off | {cert, key}` per app, from the config).
//! - [`TlsState`]: the table the handshake reads (`ArcSwap`, no lock, no store call): certificates
//!   from the store (ACME), from files, and a self-signed fallback for every `auto` name until a
//!   real one arrives; plus pending ACME challenges (HTTP-01 answers, TLS-ALPN-01 certificates).
//! - [`sync`]: keeps that table in step with the store (`cert_updated`, `challenge_changed`) and
//!   with certificate files on disk.
//! - [`listener`]: our own TLS accept loop (rustls via Pingora's `Acceptor`), which offers
//!   `acme-tls/1` beside `h2` and `http/1.1`.

pub mod listener;
pub mod sync;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use spinforge_state::config::{AppConfig, AppTls};
use spinforge_state::records::{Challenge, ChallengeType};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending challenges an edge keeps at most (each expires in the store after minutes anyway).
pub(crate) const MAX_CHALLENGES: usize = 10_000;

/// The crypto provider for everything TLS in the edge (ring, as Pingora's rustls build uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Invalid(String),
}

// --- policy ---

/// Per name, how its certificate is obtained. Names with `tls: off` are absent: a handshake for
/// them (or any unknown name) fails at once.
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    exact: HashMap<String, AppTls>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, AppTls>,
}

impl TlsPolicy {
    pub fn from_apps<'a>(apps: impl IntoIterator<Item = &'a AppConfig>) -> TlsPolicy {
        let mut p = TlsPolicy::default();
        for app in apps {
            if app.tls.is_off() {
                continue;
            }
            for d in &app.domains {
                match d.strip_prefix("*.") {
                    Some(parent) => p.wildcard.insert(parent.to_string(), app.tls.clone()),
                    None => p.exact.insert(d.clone(), app.tls.clone()),
                };
            }
        }
        p
    }

    /// The mode for a (lowercase) host: exact name first, then a one-label wildcard.
    pub fn mode(&self, host: &str) -> Option<&AppTls> {
        self.exact.get(host).or_else(|| {
            let (_, parent) = host.split_once('.')?;
            self.wildcard.get(parent)
        })
    }

    /// Every configured name (`*.` for wildcards) with its mode.
    pub fn names(&self) -> impl Iterator<Item = (String, &AppTls)> {
        self.exact
            .iter()
            .map(|(d, m)| (d.clone(), m))
            .chain(self.wildcard.iter().map(|(d, m)| (format!("*.{d}"), m)))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

// --- the certificate table ---

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// Issued through ACME, read from the store.
    Acme,
    /// `tls: { cert, key }` files.
    Files,
    /// Made up by the edge until a real one exists; browsers will not trust it.
    SelfSigned,
}

#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) source: CertSource,
    /// The leaf's notAfter, seconds since the epoch.
    pub(crate) not_after: i64,
}

/// The certificates by configured name (`*.example.com` for wildcards, as in the config).
#[derive(Debug, Default, Clone)]
pub(crate) struct CertTable {
    pub(crate) by_name: HashMap<String, Served>,
}

/// What pending ACME challenges need from an edge.
#[derive(Debug, Default, Clone)]
pub(crate) struct Challenges {
    /// HTTP-01: token → (domain, key authorization).
    pub(crate) http: HashMap<String, (String, String)>,
    /// TLS-ALPN-01: domain → the validation certificate.
    pub(crate) alpn: HashMap<String, Arc<CertifiedKey>>,
}

/// One certificate's expiry, for `spinforge_cert_expiry_seconds{domain}` in metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    pub domain: String,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    pub source: CertSource,
}

/// Shared by the handshake (resolver), the request path (challenge answers, redirects) and the
/// sync task. Readers only load `ArcSwap`s and atomics.
#[derive(Debug)]
pub struct TlsState {
    /// Swapped by a reload ([`TlsState::set_policy`]); the sync task then rebuilds the table.
    policy: ArcSwap<TlsPolicy>,
    policy_changed: tokio::sync::Notify,
    pub(crate) certs: ArcSwap<CertTable>,
    pub(crate) challenges: ArcSwap<Challenges>,
    /// The HTTPS port, for redirects; `None` when the edge has no TLS listener.
    https_port: Option<u16>,
    self_signed_handshakes: AtomicU64,
    /// Names whose self-signed use has been logged once already (the sync task resets it).
    self_signed_logged: ArcSwap<HashSet<String>>,
}

impl TlsState {
    pub fn new(policy: TlsPolicy, https_port: Option<u16>) -> TlsState {
        TlsState {
            policy: ArcSwap::from_pointee(policy),
            policy_changed: tokio::sync::Notify::new(),
            certs: ArcSwap::from_pointee(CertTable::default()),
            challenges: ArcSwap::from_pointee(Challenges::default()),
            https_port,
            self_signed_handshakes: AtomicU64::new(0),
            self_signed_logged: ArcSwap::from_pointee(HashSet::new()),
        }
    }

    pub fn policy(&self) -> arc_swap::Guard<Arc<TlsPolicy>> {
        self.policy.load()
    }

    /// A new policy (the apps' `tls` after a reload): the certificate table is rebuilt for it
    /// (store and files read again) by the sync task, within moments.
    pub fn set_policy(&self, policy: TlsPolicy) {
        self.policy.store(Arc::new(policy));
        self.policy_changed.notify_one();
    }

    /// Resolves when the policy changed since the last time it did.
    pub(crate) async fn policy_changed(&self) {
        self.policy_changed.notified().await
    }

    pub fn https_port(&self) -> Option<u16> {
        self.https_port
    }

    /// The certificate served for a (lowercase) name: exact, then a one-label wildcard.
    pub(crate) fn lookup(&self, host: &str) -> Option<Served> {
        let table = self.certs.load();
        if let Some(s) = table.by_name.get(host) {
            return Some(s.clone());
        }
        let (_, parent) = host.split_once('.')?;
        table.by_name.get(&format!("*.{parent}")).cloned()
    }

    /// Whether `host` has a certificate clients can trust (ACME or files): plain HTTP for it is
    /// then redirected to HTTPS.
    pub fn has_trusted_cert(&self, host: &str) -> bool {
        self.https_port.is_some()
            && self
                .lookup(host)
                .is_some_and(|s| s.source != CertSource::SelfSigned)
    }

    /// The HTTP-01 answer for `token` when it is pending for `host`.
    pub fn http_challenge(&self, token: &str, host: &str) -> Option<String> {
        let ch = self.challenges.load();
        let (domain, answer) = ch.http.get(token)?;
        (domain == host).then(|| answer.clone())
    }

    /// Certificates served, with their expiry (self-signed ones included, marked as such).
    pub fn cert_expiries(&self) -> Vec<CertExpiry> {
        let mut v: Vec<CertExpiry> = self
            .certs
            .load()
            .by_name
            .iter()
            .map(|(d, s)| CertExpiry {
                domain: d.clone(),
                not_after: s.not_after,
                source: s.source,
            })
            .collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v
    }

    /// Handshakes answered with a self-signed certificate since start.
    pub fn self_signed_handshakes(&self) -> u64 {
        self.self_signed_handshakes.load(Ordering::Relaxed)
    }
}

/// The rustls resolver: SNI → certificate, from [`TlsState`]. Never blocks.
#[derive(Debug)]
pub struct Resolver(pub Arc<TlsState>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // A TLS-ALPN-01 validation: only the challenge certificate will do.
            return self.0.challenges.load().alpn.get(&name).cloned();
        }
        let served = self.0.lookup(&name)?;
        if served.source == CertSource::SelfSigned {
            self.0
                .self_signed_handshakes
                .fetch_add(1, Ordering::Relaxed);
            if !self.0.self_signed_logged.load().contains(&name) {
                self.0.self_signed_logged.rcu(|set| {
                    let mut set = HashSet::clone(set);
                    // Bounded by the configured names: lookup() succeeded for it.
                    set.insert(name.clone());
                    set
                });
                tracing::info!(domain = %name, "serving a self-signed certificate: no issued certificate yet");
            }
        }
        Some(served.key)
    }
}

// --- certificates from PEM ---

/// What we need from a leaf certificate.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub(crate) not_after: i64,
    pub(crate) names: Vec<String>,
}

/// Parses a PEM chain and key into what rustls serves, checking the key matches the leaf.
pub(crate) fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Arc<CertifiedKey>, Leaf), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("the certificate chain is not valid PEM: {e}")))?;
    let Some(leaf_der) = chain.first() else {
        return Err(TlsError::Invalid("no certificate in the chain".into()));
    };
    let leaf = leaf_info(leaf_der)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| TlsError::Invalid("no usable private key in the key PEM".into()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Invalid(format!("the private key cannot be used: {e}")))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| TlsError::Invalid(format!("the key does not match the certificate: {e}")))?;
    Ok((Arc::new(ck), leaf))
}

pub(crate) fn leaf_info(der: &CertificateDer<'_>) -> Result<Leaf, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| TlsError::Invalid(format!("the certificate cannot be parsed: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(Leaf {
        not_after: cert.validity().not_after.timestamp(),
        names,
    })
}

/// Whether a certificate for `names` is valid for the configured name `domain` (which may be a
/// `*.` wildcard itself).
pub(crate) fn covers(names: &[String], domain: &str) -> bool {
    names.iter().any(|n| {
        n == domain
            || n.strip_prefix("*.").is_some_and(|parent| {
                domain
                    .split_once('.')
                    .is_some_and(|(label, rest)| rest == parent && label != "*")
            })
    })
}

/// A self-signed certificate for `name` (a wildcard name gives a wildcard certificate).
pub(crate) fn self_signed(name: &str) -> Result<Served, TlsError> {
    let err = |e: rcgen::Error| TlsError::Invalid(format!("cannot make a certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{name} (SpinForge self-signed)"),
    );
    let cert = params.self_signed(&key).map_err(err)?;
    let (ck, leaf) = certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())?;
    Ok(Served {
        key: ck,
        source: CertSource::SelfSigned,
        not_after: leaf.not_after,
    })
}

/// The TLS-ALPN-01 validation certificate for a challenge (RFC 8737): self-signed for the domain,
/// with the critical acmeIdentifier extension holding SHA-256(key authorization).
pub(crate) fn alpn_challenge_cert(c: &Challenge) -> Result<Arc<CertifiedKey>, TlsError> {
    let err = |e: rcgen::Error| TlsError::Invalid(format!("cannot make a certificate: {e}"));
    let digest = ring::digest::digest(&ring::digest::SHA256, c.key_authorization.as_bytes());
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![c.domain.clone()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = params.self_signed(&key).map_err(err)?;
    let signing = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|e| TlsError::Invalid(format!("challenge key: {e}")))?;
    // Not `from_der`: rustls refuses the critical acmeIdentifier extension there.
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// The challenge answers for a set of pending challenges (bounded by [`MAX_CHALLENGES`]).
pub(crate) fn challenges_from(list: &BTreeMap<String, Challenge>) -> Challenges {
    let mut out = Challenges::default();
    for c in list.values().take(MAX_CHALLENGES) {
        match c.kind {
            ChallengeType::Http01 => {
                out.http.insert(
                    c.token.clone(),
                    (c.domain.clone(), c.key_authorization.clone()),
                );
            }
            ChallengeType::TlsAlpn01 => match alpn_challenge_cert(c) {
                Ok(ck) => {
                    out.alpn.insert(c.domain.clone(), ck);
                }
                Err(e) => {
                    tracing::warn!(domain = %c.domain, error = %e, "cannot answer a TLS-ALPN-01 challenge")
                }
            },
        }
    }
    out
}

/// Paths of `tls: {cert, key}` files by name, for the file watcher.
pub(crate) fn file_names(policy: &TlsPolicy) -> Vec<(String, PathBuf, PathBuf)> {
    policy
        .names()
        .filter_map(|(name, mode)| match mode {
            AppTls::Files { cert, key } => Some((name, cert.clone(), key.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_coverage() {
        let names = vec!["*.example.com".to_string(), "example.com".to_string()];
        assert!(covers(&names, "a.example.com"));
        assert!(covers(&names, "example.com"));
        assert!(!covers(&names, "a.b.example.com"));
        assert!(covers(&names, "*.example.com"));
        assert!(!covers(&["a.test".to_string()], "b.test"));
    }

    #[test]
    fn self_signed_and_challenge_certs_load() {
        let s = self_signed("a.test").expect("self-signed");
        assert_eq!(s.source, CertSource::SelfSigned);
        assert!(s.not_after > 1_700_000_000);
        let c = Challenge {
            token: "t".into(),
            domain: "a.test".into(),
            kind: ChallengeType::TlsAlpn01,
            key_authorization: "t.x".into(),
        };
        alpn_challenge_cert(&c).expect("challenge cert");
    }

    fn app(name: &str, domains: &[&str], tls: AppTls) -> AppConfig {
        use spinforge_state::config::{AppSource, Framework, HealthCheck};
        AppConfig {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            source: AppSource::Directory("/nonexistent".into()),
            framework: Framework::Auto,
            env: BTreeMap::new(),
            instances: 1,
            memory: None,
            cpu: None,
            idle_timeout: None,
            drain_timeout: spinforge_state::config::DEFAULT_DRAIN_TIMEOUT,
            health_check: HealthCheck::default(),
            policy: Default::default(),
            tls,
            spa: false,
        }
    }

    #[test]
    fn names_resolve_exact_then_one_label_wildcard_and_off_names_get_nothing() {
        let apps = [
            app("a", &["a.test", "*.w.test"], AppTls::Auto),
            app("c", &["c.test"], AppTls::Off),
        ];
        let state = TlsState::new(TlsPolicy::from_apps(&apps), Some(8443));
        sync::initial(&state);
        assert_eq!(
            state.lookup("a.test").map(|s| s.source),
            Some(CertSource::SelfSigned)
        );
        assert!(state.lookup("x.w.test").is_some());
        assert!(state.lookup("a.b.w.test").is_none(), "one label only");
        assert!(state.lookup("w.test").is_none());
        assert!(state.lookup("c.test").is_none(), "tls: off");
        assert!(state.lookup("other.test").is_none());
        // Self-signed is not trusted: no redirect, no HSTS.
        assert!(!state.has_trusted_cert("a.test"));
        let names: Vec<String> = state
            .cert_expiries()
            .into_iter()
            .map(|e| e.domain)
            .collect();
        assert_eq!(names, vec!["*.w.test", "a.test"]);
    }

    #[test]
    fn corrupt_pem_is_refused_with_a_reason() {
        let e = certified_key(b"garbage", b"garbage").expect_err("corrupt");
        assert!(e.to_string().contains("no certificate"), "{e}");
    }
}
