//! The state store: one typed interface over two backends.
//!
//! - [`Store::embedded`]: in memory, for `spinforge up` on one machine (the default).
//! - [`Store::connect_redis`]: Redis through fred, when several processes or machines share state.
//!
//! Both speak the same small set of primitives — a batch of writes applied atomically together with
//! the event that announces it, plus reads — so the key schema ([`crate::keys`]) and the encoding
//! of records live here once. Writers cannot forget the event: every typed write publishes its own.
//!
//! Nothing here is for the request path: the edge reads a snapshot it builds from the store.

mod embedded;
mod redis;

use crate::config::RedisUrl;
use crate::events::Event;
use crate::keys;
use crate::records::{
    AppRecord, BuildStatus, CertRecord, Challenge, Drain, DrainLoad, DrainReport, LockGuard,
    LogEntry, Route, Spinlet,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: fred::error::Error,
    },
    #[error("redis at {url} is not reachable right now")]
    Unavailable { url: String },
    #[error("redis: {0}")]
    Command(#[from] fred::error::Error),
    #[error("stored value at {key} is not valid: {reason}")]
    Corrupt { key: String, reason: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One write of a batch. A batch is applied atomically (MULTI/EXEC on Redis, one lock in memory).
#[derive(Debug, Clone)]
pub(crate) enum Write {
    Set {
        key: String,
        value: String,
    },
    Del {
        key: String,
    },
    /// Replace a whole HASH.
    HashReplace {
        key: String,
        fields: BTreeMap<&'static str, String>,
    },
    /// Replace a whole HASH whose field names are data (none: the key goes), expiring after
    /// `ttl_ms` when given.
    HashOf {
        key: String,
        fields: Vec<(String, String)>,
        ttl_ms: Option<u64>,
    },
    SetAdd {
        key: String,
        member: String,
    },
    SetRemove {
        key: String,
        member: String,
    },
    /// Set a string that expires after `ttl_ms`.
    SetPx {
        key: String,
        value: String,
        ttl_ms: u64,
    },
    /// Raise members' scores, never lower them (`ZADD GT`).
    ZAddGreater {
        key: String,
        entries: Vec<(String, u64)>,
    },
    /// `RPUSH`.
    ListPush {
        key: String,
        value: String,
    },
    /// `LREM key 0 value`: every occurrence.
    ListRemove {
        key: String,
        value: String,
    },
    /// `LTRIM key -keep -1`: only the last `keep` entries stay.
    ListKeepLast {
        key: String,
        keep: usize,
    },
    /// `XADD key MAXLEN ~ max_len * line <line>`, once per line.
    StreamAdd {
        key: String,
        lines: Vec<String>,
        max_len: usize,
    },
    /// `EXPIRE key secs`. The embedded store keeps a bounded number of expiring keys instead.
    Expire {
        key: String,
        secs: u64,
    },
}

/// Lines kept per build log; older ones are trimmed.
pub const BUILD_LOG_MAX_LINES: usize = 10_000;
/// Build ids listed per app (`builds:{app}`), the newest.
pub const BUILDS_KEPT_PER_APP: usize = 20;
/// How long a finished build's status and log stay in the store.
pub const BUILD_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a subscription hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Reload everything you cache from the store: this is the first signal of every
    /// subscription, and comes again whenever events may have been missed (reconnect, lag).
    Resync,
    Event(Event),
}

/// What backends put on their internal broadcast channel.
#[derive(Debug, Clone)]
pub(crate) enum Delivery {
    Event(Event),
    /// The connection to the store was re-established: events may have been lost.
    Reconnected,
}

/// A stream of [`Signal`]s. Starts with [`Signal::Resync`].
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Delivery>,
    resync_due: bool,
}

impl Subscription {
    fn new(rx: broadcast::Receiver<Delivery>) -> Self {
        Self {
            rx,
            resync_due: true,
        }
    }

    /// The next signal; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Signal> {
        if std::mem::take(&mut self.resync_due) {
            return Some(Signal::Resync);
        }
        match self.rx.recv().await {
            Ok(Delivery::Event(e)) => Some(Signal::Event(e)),
            Ok(Delivery::Reconnected) => Some(Signal::Resync),
            // Fell behind and lost events: what we cache may be stale, reload it.
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Signal::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next signal if one is ready now, without waiting (for draining a burst in one go).
    pub fn try_next(&mut self) -> Option<Signal> {
        if std::mem::take(&mut self.resync_due) {
            return Some(Signal::Resync);
        }
        match self.rx.try_recv() {
            Ok(Delivery::Event(e)) => Some(Signal::Event(e)),
            Ok(Delivery::Reconnected) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                Some(Signal::Resync)
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                None
            }
        }
    }
}

/// Events buffered per subscriber before it counts as lagging (and gets a resync instead).
const EVENT_BUFFER: usize = 4096;

#[derive(Debug)]
enum Backend {
    Embedded(Box<embedded::Embedded>),
    Redis(redis::Redis),
}

/// The state store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

impl Store {
    /// An in-memory store for one process.
    pub fn embedded() -> Store {
        Store {
            backend: Arc::new(Backend::Embedded(Box::new(embedded::Embedded::new()))),
        }
    }

    /// Connects to Redis, retrying until `wait` has passed. Once connected, the clients reconnect
    /// on their own, and subscriptions get a [`Signal::Resync`] after each reconnect.
    pub async fn connect_redis(url: &RedisUrl, wait: Duration) -> Result<Store> {
        let redis = redis::Redis::connect(url, wait).await?;
        Ok(Store {
            backend: Arc::new(Backend::Redis(redis)),
        })
    }

    /// `"embedded"` or `"redis"`, for logs.
    pub fn kind(&self) -> &'static str {
        match &*self.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Redis(_) => "redis",
        }
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription::new(match &*self.backend {
            Backend::Embedded(b) => b.subscribe(),
            Backend::Redis(b) => b.subscribe(),
        })
    }

    pub async fn publish(&self, event: &Event) -> Result<()> {
        self.write(Vec::new(), Some(event)).await
    }

    // --- routes ---

    pub async fn put_route(&self, route: &Route) -> Result<()> {
        let value = serde_json::to_string(route).expect("routes serialize");
        let event = Event::RouteChanged {
            domain: route.domain.clone(),
        };
        self.write(
            vec![Write::Set {
                key: keys::route(&route.domain),
                value,
            }],
            Some(&event),
        )
        .await
    }

    pub async fn delete_route(&self, domain: &str) -> Result<()> {
        let event = Event::RouteChanged {
            domain: domain.to_string(),
        };
        self.write(
            vec![Write::Del {
                key: keys::route(domain),
            }],
            Some(&event),
        )
        .await
    }

    pub async fn route(&self, domain: &str) -> Result<Option<Route>> {
        let key = keys::route(domain);
        self.get(&key).await?.map(|v| decode(&key, &v)).transpose()
    }

    pub async fn routes(&self) -> Result<Vec<Route>> {
        self.scan_values(keys::ROUTES_PREFIX)
            .await?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Says every route, upstream set and record the supervisor owns is written (see
    /// [`keys::PUBLISHED`]).
    pub async fn mark_published(&self) -> Result<()> {
        let value = crate::now_ms().to_string();
        let key = keys::PUBLISHED.to_string();
        self.write(vec![Write::Set { key, value }], None).await
    }

    /// Whether the store holds everything the supervisor owns, as far as it said so last: false
    /// when it lost its data (a Redis restarted empty) and the supervisor has not written it all
    /// back yet — or no supervisor has ever written to it.
    pub async fn published(&self) -> Result<bool> {
        Ok(self.get(keys::PUBLISHED).await?.is_some())
    }

    // --- apps ---

    pub async fn put_app(&self, app: &AppRecord) -> Result<()> {
        let value = serde_json::to_string(app).expect("apps serialize");
        self.write(
            vec![Write::Set {
                key: keys::app(&app.name),
                value,
            }],
            None,
        )
        .await
    }

    pub async fn delete_app(&self, name: &str) -> Result<()> {
        let writes = vec![
            Write::Del {
                key: keys::app(name),
            },
            Write::Del {
                key: keys::upstreams(name),
            },
            Write::Del {
                key: keys::drains(name),
            },
            Write::Del {
                key: keys::app_builds(name),
            },
        ];
        self.write(
            writes,
            Some(&Event::UpstreamsChanged {
                app: name.to_string(),
            }),
        )
        .await
    }

    pub async fn app(&self, name: &str) -> Result<Option<AppRecord>> {
        let key = keys::app(name);
        self.get(&key).await?.map(|v| decode(&key, &v)).transpose()
    }

    pub async fn apps(&self) -> Result<Vec<AppRecord>> {
        self.scan_values(keys::APPS_PREFIX)
            .await?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    // --- spinlets ---

    pub async fn put_spinlet(&self, s: &Spinlet) -> Result<()> {
        let event = Event::SpinletState {
            id: s.id.clone(),
            app: s.app.clone(),
            state: s.state.as_str().into(),
        };
        let writes = vec![Write::HashReplace {
            key: keys::spinlet(&s.id),
            fields: s.to_fields(),
        }];
        self.write(writes, Some(&event)).await
    }

    pub async fn delete_spinlet(&self, id: &str) -> Result<()> {
        self.write(
            vec![Write::Del {
                key: keys::spinlet(id),
            }],
            None,
        )
        .await
    }

    pub async fn spinlets(&self) -> Result<Vec<Spinlet>> {
        let hashes = match &*self.backend {
            Backend::Embedded(b) => b.scan_hashes(keys::SPINLETS_PREFIX),
            Backend::Redis(b) => b.scan_hashes(keys::SPINLETS_PATTERN).await?,
        };
        hashes
            .into_iter()
            .map(|(key, fields)| {
                let id = key.strip_prefix(keys::SPINLETS_PREFIX).unwrap_or(&key);
                Spinlet::from_fields(id, &fields).ok_or_else(|| StoreError::Corrupt {
                    key: key.clone(),
                    reason: "missing or malformed spinlet fields".into(),
                })
            })
            .collect()
    }

    // --- upstreams ---

    pub async fn add_upstream(&self, app: &str, addr: &str) -> Result<()> {
        let writes = vec![Write::SetAdd {
            key: keys::upstreams(app),
            member: addr.to_string(),
        }];
        self.write(
            writes,
            Some(&Event::UpstreamsChanged {
                app: app.to_string(),
            }),
        )
        .await
    }

    pub async fn remove_upstream(&self, app: &str, addr: &str) -> Result<()> {
        let writes = vec![Write::SetRemove {
            key: keys::upstreams(app),
            member: addr.to_string(),
        }];
        self.write(
            writes,
            Some(&Event::UpstreamsChanged {
                app: app.to_string(),
            }),
        )
        .await
    }

    /// Replaces an app's upstreams with exactly `addrs` (used when re-asserting after a resync).
    pub async fn set_upstreams(&self, app: &str, addrs: &[String]) -> Result<()> {
        let key = keys::upstreams(app);
        let mut writes = vec![Write::Del { key: key.clone() }];
        writes.extend(addrs.iter().map(|a| Write::SetAdd {
            key: key.clone(),
            member: a.clone(),
        }));
        self.write(
            writes,
            Some(&Event::UpstreamsChanged {
                app: app.to_string(),
            }),
        )
        .await
    }

    pub async fn upstreams(&self, app: &str) -> Result<Vec<String>> {
        Ok(self
            .upstreams_of(&[app.to_string()])
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// The upstreams of many apps in one round trip, in the order asked.
    pub async fn upstreams_of(&self, apps: &[String]) -> Result<Vec<Vec<String>>> {
        let keys: Vec<String> = apps.iter().map(|a| keys::upstreams(a)).collect();
        match &*self.backend {
            Backend::Embedded(b) => Ok(b.members_of(&keys)),
            Backend::Redis(b) => b.members_of(&keys).await,
        }
    }

    // --- drains ---

    /// Replaces an app's upstreams with exactly `addrs` and its draining spinlets with exactly
    /// `drains`, in one batch with one `upstreams_changed`: an edge sees a spinlet leave its
    /// routing and start draining in the same update.
    pub async fn set_upstreams_and_drains(
        &self,
        app: &str,
        addrs: &[String],
        drains: &[Drain],
    ) -> Result<()> {
        let key = keys::upstreams(app);
        let mut writes = vec![Write::Del { key: key.clone() }];
        writes.extend(addrs.iter().map(|a| Write::SetAdd {
            key: key.clone(),
            member: a.clone(),
        }));
        writes.push(Write::HashOf {
            key: keys::drains(app),
            fields: drains
                .iter()
                .map(|d| (d.spinlet.clone(), d.to_value()))
                .collect(),
            ttl_ms: None,
        });
        self.write(
            writes,
            Some(&Event::UpstreamsChanged {
                app: app.to_string(),
            }),
        )
        .await
    }

    /// The upstreams and the draining spinlets of many apps in one round trip, in the order
    /// asked (malformed drain entries are left out).
    pub async fn upstreams_and_drains_of(
        &self,
        apps: &[String],
    ) -> Result<Vec<(Vec<String>, Vec<Drain>)>> {
        let keys: Vec<(String, String)> = apps
            .iter()
            .map(|a| (keys::upstreams(a), keys::drains(a)))
            .collect();
        let raw = match &*self.backend {
            Backend::Embedded(b) => b.sets_and_hashes(&keys),
            Backend::Redis(b) => b.sets_and_hashes(&keys).await?,
        };
        Ok(raw
            .into_iter()
            .map(|(addrs, fields)| {
                let mut drains: Vec<Drain> = fields
                    .iter()
                    .filter_map(|(id, v)| Drain::from_value(id, v))
                    .collect();
                drains.sort();
                (addrs, drains)
            })
            .collect())
    }

    /// An edge's report, valid for `ttl`: it is alive, still has `loads` on these draining
    /// spinlets (by id), and `answered` lists upstreams (`host:port`) that answered requests
    /// lately, with when (ms). A drain it does not list is one it has not taken out of its
    /// routing yet.
    pub async fn report_edge(
        &self,
        edge: &str,
        loads: &[(String, DrainLoad)],
        answered: &[(String, u64)],
        ttl: Duration,
    ) -> Result<()> {
        let mut fields = Vec::with_capacity(loads.len() + answered.len() + 1);
        fields.push((EDGE_ALIVE.to_string(), crate::now_ms().to_string()));
        fields.extend(loads.iter().map(|(id, l)| (id.clone(), l.to_value())));
        fields.extend(
            answered
                .iter()
                .map(|(addr, at)| (answered_field(addr), at.to_string())),
        );
        let writes = vec![
            Write::SetAdd {
                key: keys::EDGES.into(),
                member: edge.to_string(),
            },
            Write::HashOf {
                key: keys::inflight(edge),
                fields,
                ttl_ms: Some(ttl.as_millis().max(1) as u64),
            },
        ];
        self.write(writes, None).await
    }

    /// The edge stopped (everything it had in flight ended): it holds no drain any more.
    pub async fn withdraw_edge(&self, edge: &str) -> Result<()> {
        let writes = vec![
            Write::SetRemove {
                key: keys::EDGES.into(),
                member: edge.to_string(),
            },
            Write::Del {
                key: keys::inflight(edge),
            },
        ];
        self.write(writes, None).await
    }

    /// What the live edges reported on each of `spinlets`, added up, in the order asked. Edges
    /// whose reports expired are not counted (and are forgotten).
    pub async fn drain_reports(&self, spinlets: &[String]) -> Result<Vec<DrainReport>> {
        let mut out = vec![DrainReport::default(); spinlets.len()];
        if spinlets.is_empty() {
            return Ok(out);
        }
        for values in self.live_edge_reports(spinlets).await? {
            for (report, value) in out.iter_mut().zip(values) {
                report.edges += 1;
                // A value that does not parse counts as busy: better a drain that waits.
                if let Some(v) = value {
                    let load = DrainLoad::from_value(&v).unwrap_or(DrainLoad {
                        requests: 1,
                        streams: 0,
                    });
                    report.reported += 1;
                    report.load.requests += load.requests;
                    report.load.streams += load.streams;
                }
            }
        }
        Ok(out)
    }

    /// When a live edge last saw `upstream` (`host:port`) answer a request (ms), if one did in
    /// the last few seconds: a spinlet that misses health probes but answers requests is busy,
    /// not hung.
    pub async fn last_answered(&self, upstream: &str) -> Result<Option<u64>> {
        let reports = self.live_edge_reports(&[answered_field(upstream)]).await?;
        Ok(reports
            .into_iter()
            .filter_map(|mut values| values.pop()??.parse::<u64>().ok())
            .max())
    }

    /// `fields` of each live edge's report (`inflight:{edge}`), in the order asked. Edges whose
    /// reports expired are left out (and forgotten).
    async fn live_edge_reports(&self, fields: &[String]) -> Result<Vec<Vec<Option<String>>>> {
        let edges = match &*self.backend {
            Backend::Embedded(b) => b.members_of(&[keys::EDGES.to_string()]),
            Backend::Redis(b) => b.members_of(&[keys::EDGES.to_string()]).await?,
        }
        .pop()
        .unwrap_or_default();
        if edges.is_empty() {
            return Ok(Vec::new());
        }
        let mut asked = Vec::with_capacity(fields.len() + 1);
        asked.push(EDGE_ALIVE.to_string());
        asked.extend(fields.iter().cloned());
        let keys: Vec<String> = edges.iter().map(|e| keys::inflight(e)).collect();
        let reports = match &*self.backend {
            Backend::Embedded(b) => b.hash_fields(&keys, &asked),
            Backend::Redis(b) => b.hash_fields(&keys, &asked).await?,
        };
        let mut live = Vec::with_capacity(edges.len());
        let mut gone = Vec::new();
        for (edge, mut values) in edges.into_iter().zip(reports) {
            // `_` missing: its report expired, the edge is gone.
            if values.first().is_none_or(Option::is_none) {
                gone.push(Write::SetRemove {
                    key: keys::EDGES.into(),
                    member: edge,
                });
                continue;
            }
            values.remove(0);
            live.push(values);
        }
        if !gone.is_empty() {
            // Housekeeping only: the next read tries again.
            let _ = self.write(gone, None).await;
        }
        Ok(live)
    }

    // --- activity ---

    /// Records last-access times (ms); a time older than the stored one is ignored.
    pub async fn record_activity(&self, entries: &[(String, u64)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let writes = vec![Write::ZAddGreater {
            key: keys::ACTIVE.into(),
            entries: entries.to_vec(),
        }];
        self.write(writes, None).await
    }

    /// Last access (ms) of every app that has one.
    pub async fn activity(&self) -> Result<BTreeMap<String, u64>> {
        match &*self.backend {
            Backend::Embedded(b) => Ok(b.zset(keys::ACTIVE)),
            Backend::Redis(b) => b.zset(keys::ACTIVE).await,
        }
    }

    // --- certificates (automatic HTTPS) ---

    /// Stores a certificate and announces it (`cert_updated`), without a lock: for restoring a
    /// copy. Orders use [`Store::put_cert_fenced`].
    pub async fn put_cert(&self, cert: &CertRecord) -> Result<()> {
        let writes = vec![Write::HashReplace {
            key: keys::cert(&cert.domain),
            fields: cert.to_fields(),
        }];
        let event = Event::CertUpdated {
            domain: cert.domain.clone(),
        };
        self.write(writes, Some(&event)).await
    }

    /// Stores a certificate only if `lock` is still held (its owner and fencing token unchanged):
    /// a holder whose lock expired while it waited on the CA cannot overwrite a newer holder's
    /// certificate. Returns whether it was written.
    pub async fn put_cert_fenced(&self, cert: &CertRecord, lock: &LockGuard) -> Result<bool> {
        let event = Event::CertUpdated {
            domain: cert.domain.clone(),
        };
        let lock_key = keys::lock(&lock.name);
        let lock_value = lock_value(lock);
        let cert_key = keys::cert(&cert.domain);
        match &*self.backend {
            Backend::Embedded(b) => Ok(b.write_if(
                &lock_key,
                &lock_value,
                vec![Write::HashReplace {
                    key: cert_key,
                    fields: cert.to_fields(),
                }],
                Some(&event),
            )),
            Backend::Redis(b) => {
                b.put_hash_fenced(&lock_key, &lock_value, &cert_key, cert.to_fields(), &event)
                    .await
            }
        }
    }

    pub async fn delete_cert(&self, domain: &str) -> Result<()> {
        let event = Event::CertUpdated {
            domain: domain.to_string(),
        };
        self.write(
            vec![Write::Del {
                key: keys::cert(domain),
            }],
            Some(&event),
        )
        .await
    }

    /// One domain's certificate; `Corrupt` when the stored hash lacks fields.
    pub async fn cert(&self, domain: &str) -> Result<Option<CertRecord>> {
        let key = keys::cert(domain);
        let fields = match &*self.backend {
            Backend::Embedded(b) => b.hash(&key),
            Backend::Redis(b) => b.hash(&key).await?,
        };
        match fields {
            None => Ok(None),
            Some(f) => CertRecord::from_fields(domain, &f)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    key,
                    reason: "missing or malformed certificate fields".into(),
                }),
        }
    }

    /// Every stored certificate; hashes with missing fields are left out (and logged).
    pub async fn certs(&self) -> Result<Vec<CertRecord>> {
        let hashes = match &*self.backend {
            Backend::Embedded(b) => b.scan_hashes(keys::CERTS_PREFIX),
            Backend::Redis(b) => b.scan_hashes(keys::CERTS_PATTERN).await?,
        };
        Ok(hashes
            .into_iter()
            .filter_map(|(key, fields)| {
                let domain = key.strip_prefix(keys::CERTS_PREFIX).unwrap_or(&key);
                let rec = CertRecord::from_fields(domain, &fields);
                if rec.is_none() {
                    tracing::warn!(%key, "ignoring a stored certificate with missing fields");
                }
                rec
            })
            .collect())
    }

    // --- ACME account and challenges ---

    /// The ACME account's credentials (JSON; a secret).
    pub async fn acme_account(&self) -> Result<Option<String>> {
        self.get(keys::ACME_ACCOUNT).await
    }

    pub async fn put_acme_account(&self, credentials_json: &str) -> Result<()> {
        self.write(
            vec![Write::Set {
                key: keys::ACME_ACCOUNT.into(),
                value: credentials_json.to_string(),
            }],
            None,
        )
        .await
    }

    /// Publishes a pending challenge for edges to answer; it expires after `ttl`.
    pub async fn put_challenge(&self, c: &Challenge, ttl: Duration) -> Result<()> {
        let value = serde_json::to_string(c).expect("challenges serialize");
        let event = Event::ChallengeChanged {
            token: c.token.clone(),
        };
        self.write(
            vec![Write::SetPx {
                key: keys::challenge(&c.token),
                value,
                ttl_ms: ttl.as_millis().max(1) as u64,
            }],
            Some(&event),
        )
        .await
    }

    pub async fn delete_challenge(&self, token: &str) -> Result<()> {
        let event = Event::ChallengeChanged {
            token: token.to_string(),
        };
        self.write(
            vec![Write::Del {
                key: keys::challenge(token),
            }],
            Some(&event),
        )
        .await
    }

    pub async fn challenge(&self, token: &str) -> Result<Option<Challenge>> {
        let key = keys::challenge(token);
        self.get(&key).await?.map(|v| decode(&key, &v)).transpose()
    }

    /// Every pending (unexpired) challenge; malformed ones are left out.
    pub async fn challenges(&self) -> Result<Vec<Challenge>> {
        Ok(self
            .scan_values(keys::CHALLENGES_PREFIX)
            .await?
            .iter()
            .filter_map(|(k, v)| decode(k, v).ok())
            .collect())
    }

    // --- locks ---

    /// Takes the lock `name` for `ttl` unless someone holds it. The guard's fencing token is
    /// larger than any handed out before.
    pub async fn try_lock(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard>> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let key = keys::lock(name);
        let fence = match &*self.backend {
            Backend::Embedded(b) => b.try_lock(&key, owner, ttl_ms),
            Backend::Redis(b) => b.try_lock(&key, owner, ttl_ms).await?,
        };
        Ok(fence.map(|fence| LockGuard {
            name: name.to_string(),
            owner: owner.to_string(),
            fence,
        }))
    }

    /// Pushes the expiry of a held lock to `ttl` from now; `false` when it is no longer ours.
    pub async fn extend_lock(&self, lock: &LockGuard, ttl: Duration) -> Result<bool> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let key = keys::lock(&lock.name);
        let value = lock_value(lock);
        match &*self.backend {
            Backend::Embedded(b) => Ok(b.extend_lock(&key, &value, ttl_ms)),
            Backend::Redis(b) => b.extend_lock(&key, &value, ttl_ms).await,
        }
    }

    /// Releases a lock if it is still ours.
    pub async fn unlock(&self, lock: &LockGuard) -> Result<()> {
        let key = keys::lock(&lock.name);
        let value = lock_value(lock);
        match &*self.backend {
            Backend::Embedded(b) => {
                b.unlock(&key, &value);
                Ok(())
            }
            Backend::Redis(b) => b.unlock(&key, &value).await,
        }
    }

    // --- builds ---

    /// Records a new build as queued and appends it to `build:queue`.
    pub async fn enqueue_build(&self, status: &BuildStatus) -> Result<()> {
        self.write(
            vec![
                Write::HashReplace {
                    key: keys::build_status(&status.id),
                    fields: status.to_fields(),
                },
                Write::ListPush {
                    key: keys::BUILD_QUEUE.into(),
                    value: status.id.clone(),
                },
                Write::ListPush {
                    key: keys::app_builds(&status.app),
                    value: status.id.clone(),
                },
                Write::ListKeepLast {
                    key: keys::app_builds(&status.app),
                    keep: BUILDS_KEPT_PER_APP,
                },
            ],
            None,
        )
        .await
    }

    /// An app's newest builds, newest first (at most [`BUILDS_KEPT_PER_APP`]; those whose
    /// status expired are left out).
    pub async fn builds_of(&self, app: &str) -> Result<Vec<BuildStatus>> {
        let key = keys::app_builds(app);
        let ids = match &*self.backend {
            Backend::Embedded(b) => b.list(&key),
            Backend::Redis(b) => b.list(&key).await?,
        };
        // Asked together: fred pipelines them on its connection, not one round-trip each.
        let reads = futures::future::join_all(ids.iter().rev().map(|id| self.build(id))).await;
        let mut out = Vec::with_capacity(reads.len());
        for status in reads {
            out.extend(status?);
        }
        Ok(out)
    }

    /// Writes a build's status; once it left the queued state it leaves `build:queue`, and once
    /// it is final its status and log expire after [`BUILD_RETENTION`].
    pub async fn put_build(&self, status: &BuildStatus) -> Result<()> {
        let key = keys::build_status(&status.id);
        let mut writes = vec![Write::HashReplace {
            key: key.clone(),
            fields: status.to_fields(),
        }];
        if status.state != crate::records::BuildState::Queued {
            writes.push(Write::ListRemove {
                key: keys::BUILD_QUEUE.into(),
                value: status.id.clone(),
            });
        }
        if status.state.is_final() {
            let secs = BUILD_RETENTION.as_secs();
            writes.push(Write::Expire { key, secs });
            writes.push(Write::Expire {
                key: keys::build_log(&status.id),
                secs,
            });
        }
        self.write(writes, None).await
    }

    pub async fn build(&self, id: &str) -> Result<Option<BuildStatus>> {
        let key = keys::build_status(id);
        let fields = match &*self.backend {
            Backend::Embedded(b) => b.hash(&key),
            Backend::Redis(b) => b.hash(&key).await?,
        }
        .unwrap_or_default();
        if fields.is_empty() {
            return Ok(None);
        }
        BuildStatus::from_fields(id, &fields)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                key,
                reason: "missing or malformed build fields".into(),
            })
    }

    /// Build ids waiting in `build:queue`, oldest first.
    pub async fn build_queue(&self) -> Result<Vec<String>> {
        match &*self.backend {
            Backend::Embedded(b) => Ok(b.list(keys::BUILD_QUEUE)),
            Backend::Redis(b) => b.list(keys::BUILD_QUEUE).await,
        }
    }

    /// Appends lines to `build:log:{id}` (trimmed to about [`BUILD_LOG_MAX_LINES`]).
    pub async fn append_build_log(&self, id: &str, lines: Vec<String>) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.write(
            vec![Write::StreamAdd {
                key: keys::build_log(id),
                lines,
                max_len: BUILD_LOG_MAX_LINES,
            }],
            None,
        )
        .await
    }

    /// Up to `count` log lines after the entry `after` (from the start when `None`).
    pub async fn build_log(
        &self,
        id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<LogEntry>> {
        let key = keys::build_log(id);
        match &*self.backend {
            Backend::Embedded(b) => Ok(b.stream_after(&key, after, count)),
            Backend::Redis(b) => b.stream_after(&key, after, count).await,
        }
    }

    // --- primitives ---

    async fn write(&self, writes: Vec<Write>, event: Option<&Event>) -> Result<()> {
        match &*self.backend {
            Backend::Embedded(b) => {
                b.write(writes, event);
                Ok(())
            }
            Backend::Redis(b) => b.write(writes, event).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        match &*self.backend {
            Backend::Embedded(b) => Ok(b.get(key)),
            Backend::Redis(b) => b.get(key).await,
        }
    }

    async fn scan_values(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        match &*self.backend {
            Backend::Embedded(b) => Ok(b.scan_values(prefix)),
            Backend::Redis(b) => b.scan_values(&format!("{prefix}*")).await,
        }
    }

    // --- cluster rate limits ---

    /// One exchange of rate-limit counts between edges: adds each entry's `add` to its counter in
    /// time window `add_window`, and returns, in the same order, each entry's counter in
    /// `read_window` (the sum of every edge's additions). Windows expire after `ttl`, so the
    /// store holds only the last few seconds of counts. Large batches go in chunks.
    pub async fn exchange_rate_counts(
        &self,
        add_window: u64,
        read_window: u64,
        ttl: Duration,
        entries: &[RateCount],
    ) -> Result<Vec<u64>> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut totals = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(RATE_EXCHANGE_CHUNK) {
            totals.extend(match &*self.backend {
                Backend::Embedded(b) => b.exchange_rate_counts(add_window, read_window, chunk),
                Backend::Redis(b) => {
                    b.exchange_rate_counts(add_window, read_window, ttl_ms, chunk)
                        .await?
                }
            });
        }
        Ok(totals)
    }
}

/// One counter in a rate-count exchange: requests an edge let through for `client` of `app`
/// (`client` is any stable text; edges use the client key in hex, `*` for the app-wide cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCount {
    pub app: String,
    pub client: String,
    pub add: u64,
}

/// Entries per store call in [`Store::exchange_rate_counts`] (one Lua call on Redis: bounded
/// so that Redis is never blocked for long).
const RATE_EXCHANGE_CHUNK: usize = 1000;

/// The field of `inflight:{edge}` that holds when the edge last saw `upstream` answer.
fn answered_field(upstream: &str) -> String {
    format!("answered:{upstream}")
}

/// The field of `inflight:{edge}` that is there while the edge lives (its value: when written).
const EDGE_ALIVE: &str = "_";

/// `spinforge:rl:{window}:{app}`: a HASH client → requests let through in that window.
fn rate_window_key(window: u64, app: &str) -> String {
    format!("spinforge:rl:{window}:{app}")
}

/// What a lock key holds while taken.
fn lock_value(lock: &LockGuard) -> String {
    format!("{} {}", lock.owner, lock.fence)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}
