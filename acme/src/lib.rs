//! SpinForge's certificate job: gets and renews certificates from an ACME CA (Let's Encrypt by
//! default) for every domain of an app with `tls: auto`, and keeps them in the state store where
//! every edge reads them.
//!
//! - The account is created once; its credentials live in the store (`acme:account`) and in
//!   `data_dir/acme/account.json`.
//! - Per domain: a stored certificate that is valid and not due for renewal (a third of its
//!   lifetime left) is kept; otherwise, under the lock `locks:acme:{domain}` (expiry + fencing
//!   token, so several processes on one Redis order once), an order is placed, the challenge is put
//!   in the store for the edges to answer, and the chain and key go to `certs:{domain}` (a write
//!   that only succeeds while the lock is still ours) and to `data_dir/certs/{domain}/`.
//! - Failures back off exponentially per domain (longer for rate limits); domains are handled
//!   concurrently, so one that cannot be validated holds up no other.
//!
//! Nothing here serves traffic: a failure costs a log line and a retry, never an answer.

mod client;
mod order;

use spinforge_state::Store;
use spinforge_state::config::{AcmeConfig, AppTls, ChallengeKind, Config, acme_eligible};
use spinforge_state::records::{CertRecord, ChallengeType};
use spinforge_state::stop::{CancellationToken, DropGuard};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Orders placed at once; more domains wait their turn.
const CONCURRENT_ORDERS: usize = 4;
/// An order (challenge, validation, finalize, download) must finish within this.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Loading or creating the ACME account must finish within this.
const ACCOUNT_TIMEOUT: Duration = Duration::from_secs(90);
/// The per-domain lock outlives an order that times out.
const LOCK_TTL: Duration = Duration::from_secs(180);
/// While another process holds a domain's lock, look again this often.
const LOCKED_RETRY: Duration = Duration::from_secs(2);
/// First retry after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// After a `rateLimited` answer, wait at least this long.
const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(3600);
/// A valid certificate is looked at again at least this often (it may have been replaced or
/// deleted in the store).
const RECHECK: Duration = Duration::from_secs(3600);

static ORDERS_SUCCEEDED: AtomicU64 = AtomicU64::new(0);
static ORDERS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Orders that ended in a certificate, and orders that failed, since start (for metrics).
pub fn order_counts() -> (u64, u64) {
    (
        ORDERS_SUCCEEDED.load(Ordering::Relaxed),
        ORDERS_FAILED.load(Ordering::Relaxed),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("state store: {0}")]
    Store(#[from] spinforge_state::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AcmeError {
    /// Whether the CA refused a nonce (Pebble does this on purpose; a retry soon is the answer).
    fn bad_nonce(&self) -> bool {
        matches!(self, AcmeError::Acme(instant_acme::Error::Api(p))
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":badNonce")))
    }

    /// Whether the CA said we are over a rate limit.
    fn rate_limited(&self) -> bool {
        matches!(self, AcmeError::Acme(instant_acme::Error::Api(p))
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":rateLimited")))
    }
}

/// The job, ready to run.
#[derive(Debug)]
pub struct AcmeJob {
    shared: Arc<Shared>,
    domains: Vec<String>,
    /// New domain lists from a reload ([`AcmeService`]).
    updates: Option<watch::Receiver<Vec<String>>>,
}

/// The `tls: auto` domains of `config` a public CA can issue for, sorted.
fn acme_domains(config: &Config) -> Vec<String> {
    let mut domains: Vec<String> = config
        .apps
        .values()
        .filter(|a| matches!(a.tls, AppTls::Auto))
        .flat_map(|a| a.domains.iter().cloned())
        .filter(|d| acme_eligible(d))
        .collect();
    domains.sort();
    domains
}

/// What the job is made from, but for its domains: a change of it needs a new job (a new CA, a
/// new account, another place for the disk copies).
#[derive(Debug, Clone, PartialEq)]
struct Setup {
    acme: AcmeConfig,
    data_dir: PathBuf,
    listen_http: std::net::SocketAddr,
    https: bool,
}

impl Setup {
    fn of(config: &Config) -> Setup {
        Setup {
            acme: config.tls.acme.clone(),
            data_dir: config.supervisor.data_dir.clone(),
            listen_http: config.edge.listen_http,
            https: config.edge.listen_https.is_some(),
        }
    }
}

/// The certificate job as a reload changes it: started when there is something to do, told of
/// new domains while it runs (a new one is checked at once, a removed one no longer renewed),
/// and started anew when `tls.acme` changes.
#[derive(Debug)]
pub struct AcmeService {
    store: Store,
    setup: Setup,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    /// Stops the job when dropped.
    _stop: DropGuard,
    domains: watch::Sender<Vec<String>>,
}

impl AcmeService {
    /// Starts the job for `config` when it has something to do.
    pub fn start(config: &Config, store: Store) -> AcmeService {
        let mut service = AcmeService {
            store,
            setup: Setup::of(config),
            running: None,
        };
        service.launch(config);
        service
    }

    fn launch(&mut self, config: &Config) {
        if let Some(mut job) = AcmeJob::new(config, self.store.clone()) {
            let stop = CancellationToken::new();
            let (domains, updates) = watch::channel(job.domains.clone());
            job.updates = Some(updates);
            tokio::spawn(job.run(stop.clone()));
            self.running = Some(Running {
                _stop: stop.drop_guard(),
                domains,
            });
        }
    }

    /// Applies a reloaded config; returns what it did, for the log (nothing when nothing changed).
    pub fn apply(&mut self, config: &Config) -> Option<String> {
        let setup = Setup::of(config);
        let domains = acme_domains(config);
        if setup != self.setup {
            self.setup = setup;
            let was = self.running.is_some();
            self.stop_job();
            self.launch(config);
            return Some(match (was, self.running.is_some()) {
                (_, true) => "certificate job restarted with the new settings".into(),
                (true, false) => "certificate job stopped: nothing for it to do".into(),
                (false, false) => return None,
            });
        }
        match &self.running {
            Some(_) if domains.is_empty() => {
                self.running = None; // stops it
                Some("certificate job stopped: no domain needs a certificate".into())
            }
            Some(r) => {
                let changed = *r.domains.borrow() != domains;
                if changed {
                    let _ = r.domains.send(domains);
                }
                changed.then(|| "certificate job given the new domains".into())
            }
            None => {
                self.launch(config);
                self.running
                    .is_some()
                    .then(|| "certificate job started".into())
            }
        }
    }

    fn stop_job(&mut self) {
        self.running = None; // its drop guard stops it
    }

    /// Stops the job (at shutdown).
    pub fn stop(mut self) {
        self.stop_job();
    }
}

struct Shared {
    store: Store,
    acme: AcmeConfig,
    /// Who we are in locks: host, pid and a random part.
    owner: String,
    data_dir: PathBuf,
    /// Where the edge's plain-HTTP listener is, for checking a token is answered before the CA
    /// is told to look.
    http_check: Option<std::net::SocketAddr>,
    account: tokio::sync::Mutex<Option<instant_acme::Account>>,
}

impl AcmeJob {
    /// The job for `config`'s `tls: auto` domains, or `None` when there is nothing to do: no
    /// HTTPS listener (`edge.listen_https`), or no domain a public CA could issue for.
    pub fn new(config: &Config, store: Store) -> Option<AcmeJob> {
        config.edge.listen_https?;
        let domains = acme_domains(config);
        if domains.is_empty() {
            return None;
        }
        let mut http_check = config.edge.listen_http;
        if http_check.ip().is_unspecified() {
            http_check.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let owner = spinforge_state::instance_id("host");
        Some(AcmeJob {
            shared: Arc::new(Shared {
                store,
                acme: config.tls.acme.clone(),
                owner,
                data_dir: config.supervisor.data_dir.clone(),
                http_check: Some(http_check),
                account: tokio::sync::Mutex::new(None),
            }),
            domains,
            updates: None,
        })
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        tracing::info!(
            directory = %self.shared.acme.directory,
            domains = self.domains.len(),
            challenge = ?self.shared.acme.challenge,
            "certificate job started"
        );
        let permits = Arc::new(Semaphore::new(CONCURRENT_ORDERS));
        let mut due: HashMap<String, (Instant, u32)> = self
            .domains
            .iter()
            .map(|d| (d.clone(), (Instant::now(), 0)))
            .collect();
        let mut running: JoinSet<(String, Result<Next, AcmeError>)> = JoinSet::new();
        let mut busy: std::collections::HashSet<String> = Default::default();
        // A certificate written or deleted by anyone (another process, an operator) is looked at
        // again at once: a corrupt or removed one is replaced without waiting for the next check.
        let mut events = self.shared.store.subscribe();
        loop {
            let now = Instant::now();
            for (domain, (at, _)) in &due {
                if *at <= now && !busy.contains(domain) {
                    busy.insert(domain.clone());
                    let shared = self.shared.clone();
                    let permits = permits.clone();
                    let domain = domain.clone();
                    running.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        let r = shared.check(&domain).await;
                        (domain, r)
                    });
                }
            }
            let next_due = due
                .iter()
                .filter(|(d, _)| !busy.contains(*d))
                .map(|(_, (at, _))| *at)
                .min()
                .unwrap_or(now + RECHECK);
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    let Ok((domain, result)) = done else { continue };
                    busy.remove(&domain);
                    let Some(slot) = due.get_mut(&domain) else { continue };
                    match result {
                        Ok(Next::At(at)) => *slot = (at, 0),
                        Ok(Next::Locked) => slot.0 = Instant::now() + LOCKED_RETRY,
                        Err(e) if e.bad_nonce() && slot.1 < 10 => {
                            // Transient: try again soon, without growing the backoff much.
                            slot.1 += 1;
                            tracing::info!(%domain, error = %e, "the CA refused a nonce; retrying");
                            slot.0 = Instant::now() + Duration::from_millis(100 * u64::from(slot.1));
                        }
                        Err(e) => {
                            slot.1 += 1;
                            let mut wait = FIRST_BACKOFF
                                .saturating_mul(1 << (slot.1 - 1).min(16))
                                .min(MAX_BACKOFF);
                            if e.rate_limited() {
                                wait = wait.max(RATE_LIMIT_BACKOFF);
                            }
                            // Some jitter, so that processes sharing a store spread out.
                            wait += Duration::from_millis(fastrand::u64(0..1000));
                            tracing::warn!(%domain, error = %e, failures = slot.1, retry_in_s = wait.as_secs(), "could not get a certificate");
                            slot.0 = Instant::now() + wait;
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_due) => {}
                signal = events.next() => match signal {
                    Some(spinforge_state::Signal::Event(spinforge_state::Event::CertUpdated { domain })) => {
                        if let Some(slot) = due.get_mut(&domain) {
                            slot.0 = slot.0.min(Instant::now());
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                changed = async {
                    match self.updates.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(rx) = self.updates.as_mut().filter(|_| changed.is_ok()) else {
                        self.updates = None;
                        continue;
                    };
                    // A reload: new domains are looked at now, gone ones no longer (one being
                    // checked finishes and is then forgotten).
                    let wanted = rx.borrow_and_update().clone();
                    due.retain(|d, _| wanted.contains(d));
                    for d in &wanted {
                        due.entry(d.clone()).or_insert((Instant::now(), 0));
                    }
                    tracing::info!(domains = wanted.len(), "certificate job: domains updated");
                    self.domains = wanted;
                }
                _ = stop.cancelled() => break,
            }
        }
        running.abort_all();
        tracing::info!("certificate job stopped");
    }
}

/// When to look at a domain again.
#[derive(Debug)]
enum Next {
    At(Instant),
    /// Another process holds the domain's lock (it is ordering).
    Locked,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No account: its key is a secret.
        f.debug_struct("Shared")
            .field("directory", &self.acme.directory)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Keeps the domain's certificate valid: renews, replaces or orders as needed.
    async fn check(&self, domain: &str) -> Result<Next, AcmeError> {
        if let Some(at) = self.current(domain).await? {
            return Ok(Next::At(at));
        }
        let lock_name = format!("acme:{domain}");
        let Some(lock) = self
            .store
            .try_lock(&lock_name, &self.owner, LOCK_TTL)
            .await?
        else {
            return Ok(Next::Locked);
        };
        let result = async {
            // Someone may have finished an order between our look and taking the lock.
            if let Some(at) = self.current(domain).await? {
                return Ok(Next::At(at));
            }
            let account = tokio::time::timeout(ACCOUNT_TIMEOUT, self.account())
                .await
                .map_err(|_| AcmeError::Timeout {
                    what: "getting the ACME account",
                    after: ACCOUNT_TIMEOUT,
                })??;
            let kind = match self.acme.challenge {
                ChallengeKind::Http01 => ChallengeType::Http01,
                ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            tracing::info!(%domain, challenge = ?kind, "ordering a certificate");
            let started = std::time::Instant::now();
            let issued = match tokio::time::timeout(
                ORDER_TIMEOUT,
                order::issue(&account, &self.store, domain, kind, self.http_check),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(AcmeError::Timeout {
                    what: "the order",
                    after: ORDER_TIMEOUT,
                }),
            };
            let (chain_pem, key_pem) = match issued {
                Ok(c) => c,
                Err(e) => {
                    ORDERS_FAILED.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let info = cert_info(&chain_pem, domain)?;
            let rec = CertRecord {
                domain: domain.to_string(),
                chain_pem,
                key_pem,
                not_after: info.not_after,
                issued_ms: spinforge_state::now_ms(),
            };
            if !self.store.put_cert_fenced(&rec, &lock).await? {
                ORDERS_FAILED.fetch_add(1, Ordering::Relaxed);
                return Err(AcmeError::Invalid(
                    "the domain's lock expired before the certificate was stored; not storing it"
                        .into(),
                ));
            }
            ORDERS_SUCCEEDED.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%domain, not_after = info.not_after, took_ms = started.elapsed().as_millis() as u64, "certificate issued");
            if let Err(e) = self.write_disk_copy(&rec) {
                tracing::warn!(%domain, error = %e, "cannot keep a copy of the certificate on disk");
            }
            Ok(Next::At(renewal_instant(&info)))
        }
        .await;
        if let Err(e) = self.store.unlock(&lock).await {
            tracing::debug!(%domain, error = %e, "cannot release the lock; it expires on its own");
        }
        result
    }

    /// When the current certificate needs looking at again, or `None` if it must be (re)placed
    /// now: missing, corrupt, for other names, or due for renewal. A missing store entry is
    /// restored from the disk copy when that one is still good.
    async fn current(&self, domain: &str) -> Result<Option<Instant>, AcmeError> {
        match self.store.cert(domain).await {
            Ok(Some(rec)) => match cert_info(&rec.chain_pem, domain) {
                Ok(info) if !info.renewal_due() && key_matches(&rec) => {
                    return Ok(Some(renewal_instant(&info)));
                }
                Ok(info) if info.renewal_due() => {
                    tracing::info!(%domain, not_after = info.not_after, "certificate due for renewal");
                    return Ok(None);
                }
                Ok(_) => {
                    tracing::warn!(%domain, "stored certificate's key does not match it; replacing it");
                    return Ok(None);
                }
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "stored certificate is not usable; replacing it");
                    return Ok(None);
                }
            },
            Ok(None) => {}
            Err(spinforge_state::StoreError::Corrupt { reason, .. }) => {
                tracing::warn!(%domain, %reason, "stored certificate is corrupt; replacing it");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        // Nothing stored: a Redis that lost its data, or a first start with an old data_dir.
        if let Some(rec) = self.read_disk_copy(domain) {
            if let Ok(info) = cert_info(&rec.chain_pem, domain) {
                if !info.renewal_due() && key_matches(&rec) {
                    self.store.put_cert(&rec).await?;
                    tracing::info!(%domain, "restored the certificate from the disk copy");
                    return Ok(Some(renewal_instant(&info)));
                }
            }
        }
        Ok(None)
    }

    /// The ACME account: from memory, the store, the disk copy, or created (once, under a lock).
    async fn account(&self) -> Result<instant_acme::Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(a) = cached.as_ref() {
            return Ok(a.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let account = loop {
            if let Some(creds) = self.stored_account().await? {
                break client::restore(&self.acme, creds).await?;
            }
            let lock = self
                .store
                .try_lock("acme:account", &self.owner, LOCK_TTL)
                .await?;
            if let Some(lock) = lock {
                let made = async {
                    if let Some(creds) = self.stored_account().await? {
                        return client::restore(&self.acme, creds).await;
                    }
                    let (account, json) = client::create(&self.acme).await?;
                    self.store.put_acme_account(&json).await?;
                    write_private(&self.data_dir.join("acme/account.json"), json.as_bytes())?;
                    tracing::info!(directory = %self.acme.directory, "ACME account created");
                    Ok(account)
                }
                .await;
                let _ = self.store.unlock(&lock).await;
                break made?;
            }
            if Instant::now() > deadline {
                return Err(AcmeError::Timeout {
                    what: "waiting for another process to create the ACME account",
                    after: Duration::from_secs(60),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// Credentials for this directory from the store, else from disk (then put back in the store).
    async fn stored_account(&self) -> Result<Option<String>, AcmeError> {
        if let Some(json) = self.store.acme_account().await? {
            if client::for_directory(&json, &self.acme.directory) {
                return Ok(Some(json));
            }
        }
        let path = self.data_dir.join("acme/account.json");
        if let Ok(json) = std::fs::read_to_string(&path) {
            if client::for_directory(&json, &self.acme.directory) {
                self.store.put_acme_account(&json).await?;
                return Ok(Some(json));
            }
        }
        Ok(None)
    }

    fn cert_dir(&self, domain: &str) -> PathBuf {
        self.data_dir.join("certs").join(domain)
    }

    fn write_disk_copy(&self, rec: &CertRecord) -> Result<(), AcmeError> {
        let dir = self.cert_dir(&rec.domain);
        write_private(&dir.join("privkey.pem"), rec.key_pem.as_bytes())?;
        write_private(&dir.join("fullchain.pem"), rec.chain_pem.as_bytes())?;
        Ok(())
    }

    fn read_disk_copy(&self, domain: &str) -> Option<CertRecord> {
        let dir = self.cert_dir(domain);
        let chain_pem = std::fs::read_to_string(dir.join("fullchain.pem")).ok()?;
        let key_pem = std::fs::read_to_string(dir.join("privkey.pem")).ok()?;
        let info = cert_info(&chain_pem, domain).ok()?;
        Some(CertRecord {
            domain: domain.to_string(),
            chain_pem,
            key_pem,
            not_after: info.not_after,
            issued_ms: spinforge_state::now_ms(),
        })
    }
}

/// Writes a file readable by its owner only, whole or not at all (temp file + rename).
fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// What the job needs to know about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// A third of the lifetime left (or already expired).
    pub fn renewal_due(&self) -> bool {
        now_s() >= self.renew_at()
    }

    /// Unix seconds when a third of the lifetime is left.
    pub fn renew_at(&self) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0);
        self.not_after - lifetime / 3
    }
}

fn now_s() -> i64 {
    spinforge_state::now_ms() as i64 / 1000
}

fn renewal_instant(info: &CertInfo) -> Instant {
    let wait = (info.renew_at() - now_s()).max(0) as u64;
    Instant::now() + Duration::from_secs(wait).min(RECHECK)
}

/// Parses the leaf of a PEM chain and checks it is for `domain`.
pub fn cert_info(chain_pem: &str, domain: &str) -> Result<CertInfo, AcmeError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::*;
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| AcmeError::Invalid("no certificate in the PEM".into()))?
        .map_err(|e| AcmeError::Invalid(format!("the PEM is not valid: {e}")))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| AcmeError::Invalid(format!("the certificate cannot be parsed: {e}")))?;
    let covered = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(domain)))
        });
    if !covered {
        return Err(AcmeError::Invalid(format!(
            "the certificate is not for {domain}"
        )));
    }
    Ok(CertInfo {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Whether the stored key is the certificate's (a mismatched pair would fail every handshake).
fn key_matches(rec: &CertRecord) -> bool {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Ok(chain) =
        CertificateDer::pem_slice_iter(rec.chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let Ok(key) = PrivateKeyDer::from_pem_slice(rec.key_pem.as_bytes()) else {
        return false;
    };
    let Ok(signing) = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
    else {
        return false;
    };
    rustls::sign::CertifiedKey::new(chain, signing)
        .keys_match()
        .is_ok()
}
