//! Keeps [`TlsState`] in step: certificates from the store (`cert_updated`), pending challenges
//! (`challenge_changed`), and `tls: {cert, key}` files (looked at every few seconds, reloaded when
//! they change). A self-signed certificate stands in for every `auto` name without a real one.
//! A certificate that cannot be used (corrupt, expired, for other names) is logged and skipped.

use super::{CertSource, CertTable, Served, TlsState, certified_key, covers, self_signed};
use spinforge_state::config::AppTls;
use spinforge_state::records::{CertRecord, Challenge};
use spinforge_state::stop::CancellationToken;
use spinforge_state::{Event, Signal, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A net under lost events: reload everything this often.
const FULL_RELOAD: Duration = Duration::from_secs(30);
/// How often certificate files are checked for changes.
const FILE_CHECK: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);

/// The modification times of a cert file and its key file.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

/// What the table is built from.
#[derive(Debug, Default)]
pub struct Model {
    /// Usable certificates from the store, by configured name.
    stored: HashMap<String, Served>,
    /// From files, by configured name, with the files' modification times.
    files: HashMap<String, (Served, Stamp)>,
    /// Self-signed stand-ins, made once per name.
    self_signed: HashMap<String, Served>,
    challenges: BTreeMap<String, Challenge>,
}

/// Builds the first table (self-signed stand-ins and files) so that HTTPS answers from the start;
/// [`keep_in_sync`] carries on from it.
pub fn initial(state: &TlsState) -> Model {
    let mut model = Model::default();
    model.load_files(state);
    publish(state, &mut model);
    model
}

/// Runs until `stop` is cancelled.
pub async fn keep_in_sync(
    store: Store,
    state: Arc<TlsState>,
    mut model: Model,
    stop: CancellationToken,
) {
    let mut sub = store.subscribe();
    let mut full = tokio::time::interval(FULL_RELOAD);
    let mut files = tokio::time::interval(FILE_CHECK);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut reload = false;
        let mut events = Vec::new();
        tokio::select! {
            s = sub.next() => match s {
                Some(Signal::Resync) => reload = true,
                Some(Signal::Event(e)) => events.push(e),
                None => return,
            },
            _ = full.tick() => reload = true,
            _ = retry => reload = true,
            _ = files.tick() => {
                if model.load_files(&state) {
                    publish(&state, &mut model);
                }
                continue;
            }
            _ = state.policy_changed() => {
                // Other names, or other files for a name: read everything again.
                model.files.clear();
                model.load_files(&state);
                reload = true;
            }
            _ = stop.cancelled() => return,
        }
        while let Some(s) = sub.try_next() {
            match s {
                Signal::Resync => reload = true,
                Signal::Event(e) => events.push(e),
            }
        }
        let outcome = if reload {
            model.reload(&store, &state).await
        } else {
            model.apply(&store, &state, &events).await
        };
        match outcome {
            Ok(changed) => {
                retry_at = None;
                if changed {
                    publish(&state, &mut model);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh certificates from the store; serving the last known ones");
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

impl Model {
    async fn reload(&mut self, store: &Store, state: &TlsState) -> Result<bool, StoreError> {
        let certs = store.certs().await?;
        let challenges = store.challenges().await?;
        self.stored.clear();
        for rec in certs {
            self.take_stored(state, &rec);
        }
        self.challenges = challenges
            .into_iter()
            .map(|c| (c.token.clone(), c))
            .collect();
        Ok(true)
    }

    async fn apply(
        &mut self,
        store: &Store,
        state: &TlsState,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        let mut changed = false;
        for e in events {
            match e {
                Event::CertUpdated { domain } => {
                    changed = true;
                    self.stored.remove(domain);
                    match store.cert(domain).await {
                        Ok(Some(rec)) => self.take_stored(state, &rec),
                        Ok(None) => {}
                        Err(StoreError::Corrupt { key, reason }) => {
                            tracing::warn!(%key, %reason, "ignoring a stored certificate");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Event::ChallengeChanged { token } => {
                    changed = true;
                    match store.challenge(token).await {
                        Ok(Some(c)) if self.challenges.len() < super::MAX_CHALLENGES => {
                            self.challenges.insert(token.clone(), c);
                        }
                        Ok(_) | Err(StoreError::Corrupt { .. }) => {
                            self.challenges.remove(token);
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
        }
        Ok(changed)
    }

    /// Keeps a stored certificate if the config wants ACME for its name and it is usable.
    fn take_stored(&mut self, state: &TlsState, rec: &CertRecord) {
        if !matches!(state.policy().mode(&rec.domain), Some(AppTls::Auto)) {
            return; // not ours to serve (another config's domain, or tls: off / files)
        }
        match usable(
            rec.chain_pem.as_bytes(),
            rec.key_pem.as_bytes(),
            &rec.domain,
        ) {
            Ok(served) => {
                self.stored.insert(
                    rec.domain.clone(),
                    Served {
                        source: CertSource::Acme,
                        ..served
                    },
                );
            }
            Err(reason) => {
                tracing::warn!(domain = %rec.domain, %reason, "ignoring a stored certificate; serving a self-signed one until it is replaced");
            }
        }
    }

    /// (Re)loads `tls: {cert, key}` files whose modification time changed. Returns whether any
    /// did. A file that cannot be used keeps the last good certificate serving.
    fn load_files(&mut self, state: &TlsState) -> bool {
        let mut changed = false;
        for (name, cert, key) in super::file_names(&state.policy()) {
            let stamp = (mtime(&cert), mtime(&key));
            if self.files.get(&name).is_some_and(|(_, s)| *s == stamp) {
                continue;
            }
            match read_pair(&cert, &key).and_then(|(c, k)| usable(&c, &k, &name)) {
                Ok(served) => {
                    tracing::info!(domain = %name, cert = %cert.display(), "loaded certificate files");
                    self.files.insert(
                        name,
                        (
                            Served {
                                source: CertSource::Files,
                                ..served
                            },
                            stamp,
                        ),
                    );
                    changed = true;
                }
                Err(reason) => {
                    tracing::warn!(domain = %name, cert = %cert.display(), key = %key.display(), %reason, "cannot use the certificate files");
                    // Remember the stamp so the warning comes once per change, keeping what serves.
                    let kept = self.files.remove(&name).map(|(s, _)| s);
                    if let Some(s) = kept {
                        self.files.insert(name, (s, stamp));
                    }
                }
            }
        }
        changed
    }
}

fn mtime(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn read_pair(cert: &PathBuf, key: &PathBuf) -> Result<(Vec<u8>, Vec<u8>), String> {
    let c = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let k = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    Ok((c, k))
}

/// A certificate for `name` that parses, matches its key, covers the name and has not expired.
fn usable(chain: &[u8], key: &[u8], name: &str) -> Result<Served, String> {
    let (ck, leaf) = certified_key(chain, key).map_err(|e| e.to_string())?;
    if !covers(&leaf.names, name) {
        return Err(format!(
            "the certificate is for {:?}, not {name}",
            leaf.names
        ));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if leaf.not_after <= now {
        return Err("the certificate has expired".into());
    }
    Ok(Served {
        key: ck,
        source: CertSource::Acme,
        not_after: leaf.not_after,
    })
}

/// Swaps in a new table: files, then store, then self-signed, per configured name.
fn publish(state: &TlsState, model: &mut Model) {
    let mut table = CertTable::default();
    let names: Vec<(String, AppTls)> = state
        .policy()
        .names()
        .map(|(n, m)| (n, m.clone()))
        .collect();
    for (name, mode) in names {
        let real = match mode {
            AppTls::Files { .. } => model.files.get(&name).map(|(s, _)| s.clone()),
            AppTls::Auto => model.stored.get(&name).cloned(),
            AppTls::Off => continue,
        };
        let served = match real {
            Some(s) => s,
            None => match model.self_signed.get(&name) {
                Some(s) => s.clone(),
                None => match self_signed(&name) {
                    Ok(s) => {
                        model.self_signed.insert(name.clone(), s.clone());
                        s
                    }
                    Err(e) => {
                        tracing::warn!(domain = %name, error = %e, "cannot make a self-signed certificate");
                        continue;
                    }
                },
            },
        };
        table.by_name.insert(name, served);
    }
    tracing::debug!(
        certs = table.by_name.len(),
        challenges = model.challenges.len(),
        "certificate table updated"
    );
    state.certs.store(Arc::new(table));
    state
        .challenges
        .store(Arc::new(super::challenges_from(&model.challenges)));
}
