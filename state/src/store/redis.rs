//! The Redis backend through fred: one client for commands, one subscriber for events. Both
//! reconnect on their own; after the subscriber reconnects it subscribes again and tells every
//! [`super::Subscription`] to resync, since events published meanwhile are gone.

use super::{Delivery, EVENT_BUFFER, Result, StoreError, Write};
use crate::config::RedisUrl;
use crate::events::Event;
use crate::keys;
use crate::records::LogEntry;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::sorted_sets::Ordering;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::broadcast;

/// What a command returns: a future boxed here (see `impl Redis`).
type Command<'a, T> = BoxFuture<'a, Result<T>>;

/// A hash's fields and values.
type Fields = BTreeMap<String, String>;

/// No Redis command may wait longer than this: callers retry on their own schedule.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct Redis {
    url: String,
    client: Client,
    subscriber: SubscriberClient,
    events: broadcast::Sender<Delivery>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

// Every command returns a future boxed here. rustc compiles an `async fn`'s body in the crate
// that awaits it, so unboxed, each crate using the store (the edge, built at opt-level 2, among
// them) compiled its own copy of fred's client code. A Redis round trip dwarfs the allocation.
impl Redis {
    pub(crate) fn connect(url: &RedisUrl, wait: Duration) -> Command<'_, Redis> {
        Box::pin(async move {
            let shown = url.to_string();
            let err = |source| StoreError::Redis {
                url: shown.clone(),
                source,
            };
            let config = Config::from_url(url.expose()).map_err(err)?;
            let mut builder = Builder::from_config(config);
            builder
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.internal_command_timeout = COMMAND_TIMEOUT;
                    c.max_command_attempts = 2;
                })
                .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
                // Forever, backing off to one attempt every 2 s.
                .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
            let client = builder.build().map_err(err)?;
            let subscriber = builder.build_subscriber_client().map_err(err)?;

            let deadline = tokio::time::Instant::now() + wait;
            for c in [&client as &dyn InitClient, &subscriber] {
                loop {
                    match c.init_once().await {
                        Ok(()) => break,
                        Err(e) if tokio::time::Instant::now() < deadline => {
                            tracing::warn!(redis = %shown, error = %e, "cannot reach Redis yet; retrying");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => return Err(err(e)),
                    }
                }
            }

            let events = broadcast::channel(EVENT_BUFFER).0;
            // Listen before subscribing, so nothing published after SUBSCRIBE returns is missed.
            let messages = subscriber.message_rx();
            let reconnects = subscriber.reconnect_rx();
            subscribe_confirmed(&subscriber).await.map_err(err)?;
            tokio::spawn(relay(
                subscriber.clone(),
                messages,
                reconnects,
                events.clone(),
            ));
            tracing::info!(redis = %shown, "connected to Redis");
            Ok(Redis {
                url: shown,
                client,
                subscriber,
                events,
            })
        })
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Delivery> {
        self.events.subscribe()
    }

    /// While Redis is away, commands fail at once instead of queueing inside fred to be replayed,
    /// stale, after the reconnect; callers re-assert their state after the resync instead.
    fn ensure_connected(&self) -> Result<()> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(StoreError::Unavailable {
                url: self.url.clone(),
            })
        }
    }

    pub(crate) fn write<'a>(
        &'a self,
        writes: Vec<Write>,
        event: Option<&'a Event>,
    ) -> Command<'a, ()> {
        Box::pin(async move {
            self.ensure_connected()?;
            let trx = self.client.multi();
            for w in writes {
                match w {
                    Write::Set { key, value } => {
                        trx.set::<(), _, _>(key, value, None, None, false).await?
                    }
                    Write::Del { key } => trx.del::<(), _>(key).await?,
                    Write::SetPx { key, value, ttl_ms } => {
                        trx.set::<(), _, _>(
                            key,
                            value,
                            Some(Expiration::PX(ttl_ms as i64)),
                            None,
                            false,
                        )
                        .await?
                    }
                    Write::HashReplace { key, fields } => {
                        trx.del::<(), _>(key.clone()).await?;
                        let fields: HashMap<String, String> = fields
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect();
                        trx.hset::<(), _, _>(key, fields).await?
                    }
                    Write::HashOf {
                        key,
                        fields,
                        ttl_ms,
                    } => {
                        trx.del::<(), _>(key.clone()).await?;
                        if !fields.is_empty() {
                            trx.hset::<(), _, _>(key.clone(), fields).await?;
                            if let Some(ttl) = ttl_ms {
                                trx.pexpire::<(), _>(key, ttl as i64, None).await?;
                            }
                        }
                    }
                    Write::SetAdd { key, member } => trx.sadd::<(), _, _>(key, member).await?,
                    Write::SetRemove { key, member } => trx.srem::<(), _, _>(key, member).await?,
                    Write::ZAddGreater { key, entries } => {
                        let values: Vec<(f64, String)> = entries
                            .into_iter()
                            .map(|(m, score)| (score as f64, m))
                            .collect();
                        trx.zadd::<(), _, _>(
                            key,
                            None,
                            Some(Ordering::GreaterThan),
                            false,
                            false,
                            values,
                        )
                        .await?
                    }
                    Write::ListPush { key, value } => trx.rpush::<(), _, _>(key, value).await?,
                    Write::ListRemove { key, value } => trx.lrem::<(), _, _>(key, 0, value).await?,
                    Write::ListKeepLast { key, keep } => {
                        trx.ltrim::<(), _>(key, -(keep as i64), -1).await?
                    }
                    Write::StreamAdd {
                        key,
                        lines,
                        max_len,
                    } => {
                        for line in lines {
                            trx.xadd::<(), _, _, _, _>(
                                key.as_str(),
                                false,
                                ("MAXLEN", "~", max_len as i64),
                                "*",
                                vec![("line", line)],
                            )
                            .await?
                        }
                    }
                    Write::Expire { key, secs } => {
                        trx.expire::<(), _>(key, secs as i64, None).await?
                    }
                }
            }
            if let Some(e) = event {
                trx.publish::<(), _, _>(keys::EVENTS, e.to_json()).await?;
            }
            let _: Value = trx.exec(true).await?;
            Ok(())
        })
    }

    pub(crate) fn get<'a>(&'a self, key: &'a str) -> Command<'a, Option<String>> {
        Box::pin(async move {
            self.ensure_connected()?;
            Ok(self.client.get(key).await?)
        })
    }

    async fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        self.ensure_connected()?;
        // fred applies no command timeout to SCAN: while Redis is away it would wait for the
        // reconnect forever. Bound every page instead.
        let mut scan = std::pin::pin!(self.client.scan_buffered(pattern, Some(1000), None));
        let mut keys = Vec::new();
        loop {
            match tokio::time::timeout(COMMAND_TIMEOUT, scan.try_next()).await {
                Ok(Ok(Some(key))) => keys.extend(key.into_string()),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    let e =
                        fred::error::Error::new(fred::error::ErrorKind::Timeout, "SCAN timed out");
                    return Err(e.into());
                }
            }
        }
        keys.sort();
        keys.dedup(); // SCAN may return a key twice
        Ok(keys)
    }

    pub(crate) fn scan_values<'a>(
        &'a self,
        pattern: &'a str,
    ) -> Command<'a, Vec<(String, String)>> {
        Box::pin(async move {
            self.ensure_connected()?;
            let keys = self.keys(pattern).await?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(500) {
                let values: Vec<Option<String>> = self.client.mget(chunk.to_vec()).await?;
                out.extend(
                    chunk
                        .iter()
                        .cloned()
                        .zip(values)
                        .filter_map(|(k, v)| Some((k, v?))),
                );
            }
            Ok(out)
        })
    }

    pub(crate) fn scan_hashes<'a>(
        &'a self,
        pattern: &'a str,
    ) -> Command<'a, Vec<(String, Fields)>> {
        Box::pin(async move {
            let keys = self.keys(pattern).await?;
            let pipeline = self.client.pipeline();
            for k in &keys {
                pipeline.hgetall::<(), _>(k.as_str()).await?;
            }
            let hashes: Vec<HashMap<String, String>> = if keys.is_empty() {
                Vec::new()
            } else {
                pipeline.all().await?
            };
            Ok(keys
                .into_iter()
                .zip(hashes)
                .filter(|(_, h)| !h.is_empty()) // deleted between SCAN and HGETALL
                .map(|(k, h)| (k, h.into_iter().collect()))
                .collect())
        })
    }

    pub(crate) fn members_of<'a>(&'a self, keys: &'a [String]) -> Command<'a, Vec<Vec<String>>> {
        Box::pin(async move {
            self.ensure_connected()?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut sets = Vec::with_capacity(keys.len());
            // In pipelines of 500: fred's command queue keeps the capacity it grew to, so one
            // pipeline of 10,000 commands would hold megabytes for the life of the connection.
            for chunk in keys.chunks(500) {
                let pipeline = self.client.pipeline();
                for k in chunk {
                    pipeline.smembers::<(), _>(k.as_str()).await?;
                }
                // One result per command. (`all()` answers a list of replies even for one
                // command, which fred's conversion then mangles unless that one set has exactly
                // one member.)
                for set in pipeline.try_all::<Vec<String>>().await {
                    let mut set = set?;
                    set.sort();
                    sets.push(set);
                }
            }
            Ok(sets)
        })
    }

    /// For each `(set key, hash key)`: the set's members (sorted) and the hash's fields, in
    /// pipelines of 250 pairs.
    pub(crate) fn sets_and_hashes<'a>(
        &'a self,
        keys: &'a [(String, String)],
    ) -> Command<'a, Vec<(Vec<String>, Fields)>> {
        Box::pin(async move {
            self.ensure_connected()?;
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(250) {
                let pipeline = self.client.pipeline();
                for (set, hash) in chunk {
                    pipeline.smembers::<(), _>(set.as_str()).await?;
                    pipeline.hgetall::<(), _>(hash.as_str()).await?;
                }
                let mut replies = pipeline.try_all::<Value>().await.into_iter();
                while let (Some(set), Some(hash)) = (replies.next(), replies.next()) {
                    let mut members: Vec<String> = set?.convert()?;
                    members.sort();
                    let fields: HashMap<String, String> = hash?.convert()?;
                    out.push((members, fields.into_iter().collect()));
                }
            }
            Ok(out)
        })
    }

    /// For each hash in `keys`, the values of `fields` (`None`: absent), in one pipeline of
    /// HMGETs.
    pub(crate) fn hash_fields<'a>(
        &'a self,
        keys: &'a [String],
        fields: &'a [String],
    ) -> Command<'a, Vec<Vec<Option<String>>>> {
        Box::pin(async move {
            self.ensure_connected()?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(250) {
                let pipeline = self.client.pipeline();
                for k in chunk {
                    pipeline
                        .hmget::<(), _, _>(k.as_str(), fields.to_vec())
                        .await?;
                }
                for values in pipeline.try_all::<Value>().await {
                    let values = match values? {
                        Value::Array(items) => items
                            .into_iter()
                            .map(|v| v.convert::<Option<String>>())
                            .collect::<Result<Vec<_>, _>>()?,
                        // One field asked: a bare reply.
                        other => vec![other.convert::<Option<String>>()?],
                    };
                    out.push(values);
                }
            }
            Ok(out)
        })
    }

    pub(crate) fn hash<'a>(&'a self, key: &'a str) -> Command<'a, Option<Fields>> {
        Box::pin(async move {
            self.ensure_connected()?;
            let h: HashMap<String, String> = self.client.hgetall(key).await?;
            Ok((!h.is_empty()).then(|| h.into_iter().collect()))
        })
    }

    pub(crate) fn try_lock<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> Command<'a, Option<u64>> {
        Box::pin(async move {
            self.ensure_connected()?;
            let fence: Option<i64> = self
                .client
                .eval(
                    LOCK_SCRIPT,
                    vec![key.to_string(), keys::FENCING.to_string()],
                    vec![owner.to_string(), ttl_ms.to_string()],
                )
                .await?;
            Ok(fence.map(|f| f as u64))
        })
    }

    pub(crate) fn extend_lock<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl_ms: u64,
    ) -> Command<'a, bool> {
        Box::pin(async move {
            self.ensure_connected()?;
            let n: i64 = self
                .client
                .eval(
                    EXTEND_SCRIPT,
                    vec![key.to_string()],
                    vec![value.to_string(), ttl_ms.to_string()],
                )
                .await?;
            Ok(n == 1)
        })
    }

    pub(crate) fn unlock<'a>(&'a self, key: &'a str, value: &'a str) -> Command<'a, ()> {
        Box::pin(async move {
            self.ensure_connected()?;
            let _: i64 = self
                .client
                .eval(
                    UNLOCK_SCRIPT,
                    vec![key.to_string()],
                    vec![value.to_string()],
                )
                .await?;
            Ok(())
        })
    }

    /// Replaces the hash at `key` and publishes `event`, only while `lock_key` holds `lock_value`.
    pub(crate) fn put_hash_fenced<'a>(
        &'a self,
        lock_key: &'a str,
        lock_value: &'a str,
        key: &'a str,
        fields: BTreeMap<&'static str, String>,
        event: &'a Event,
    ) -> Command<'a, bool> {
        Box::pin(async move {
            self.ensure_connected()?;
            let mut args = vec![
                lock_value.to_string(),
                keys::EVENTS.to_string(),
                event.to_json(),
            ];
            for (k, v) in fields {
                args.push(k.to_string());
                args.push(v);
            }
            let n: i64 = self
                .client
                .eval(
                    FENCED_HASH_SCRIPT,
                    vec![lock_key.to_string(), key.to_string()],
                    args,
                )
                .await?;
            Ok(n == 1)
        })
    }

    pub(crate) fn zset<'a>(&'a self, key: &'a str) -> Command<'a, BTreeMap<String, u64>> {
        Box::pin(async move {
            self.ensure_connected()?;
            let pairs: Vec<(String, f64)> = self
                .client
                .zrange(key, 0, -1, None, false, None, true)
                .await?;
            Ok(pairs.into_iter().map(|(m, s)| (m, s as u64)).collect())
        })
    }
}

// Locks: `SET NX PX` done in a script so that taking the lock and drawing the fencing token are
// one step. The value is `{owner} {fence}`; only that exact value may extend, release, or write
// under the lock.
const LOCK_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. fence, 'PX', ARGV[2])
return fence
"#;

const EXTEND_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const UNLOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

const FENCED_HASH_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

impl Redis {
    pub(crate) fn list<'a>(&'a self, key: &'a str) -> Command<'a, Vec<String>> {
        Box::pin(async move {
            self.ensure_connected()?;
            Ok(self.client.lrange(key, 0, -1).await?)
        })
    }

    pub(crate) fn stream_after<'a>(
        &'a self,
        key: &'a str,
        after: Option<&'a str>,
        count: usize,
    ) -> Command<'a, Vec<LogEntry>> {
        Box::pin(async move {
            self.ensure_connected()?;
            // `(id` is exclusive (Redis 6.2+).
            let start = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
            let entries: Vec<(String, HashMap<String, String>)> = self
                .client
                .xrange(key, start, "+", Some(count as u64))
                .await?;
            Ok(entries
                .into_iter()
                .map(|(id, mut fields)| LogEntry {
                    id,
                    line: fields.remove("line").unwrap_or_default(),
                })
                .collect())
        })
    }

    pub(crate) fn exchange_rate_counts<'a>(
        &'a self,
        add_window: u64,
        read_window: u64,
        ttl_ms: u64,
        entries: &'a [super::RateCount],
    ) -> Command<'a, Vec<u64>> {
        Box::pin(async move {
            self.ensure_connected()?;
            if entries.is_empty() {
                return Ok(Vec::new());
            }
            // Keys are built here and passed as KEYS (add key, read key per entry), as scripts
            // must.
            let mut keys = Vec::with_capacity(entries.len() * 2);
            let mut args = Vec::with_capacity(entries.len() * 2 + 1);
            args.push(ttl_ms.to_string());
            for e in entries {
                keys.push(super::rate_window_key(add_window, &e.app));
                keys.push(super::rate_window_key(read_window, &e.app));
                args.push(e.client.clone());
                args.push(e.add.to_string());
            }
            let totals: Vec<i64> = self.client.eval(RATE_EXCHANGE_SCRIPT, keys, args).await?;
            Ok(totals.into_iter().map(|t| t.max(0) as u64).collect())
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Stop reconnecting forever once nobody holds the store.
        let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.quit().await;
                let _ = subscriber.quit().await;
            });
        }
    }
}

/// Both fred client kinds, for the connect loop above. `Send + Sync` so that `connect` (which holds
/// `&dyn InitClient` across `.await`) stays `Send` and can run inside `tokio::spawn`.
trait InitClient: Send + Sync {
    fn init_once(&self) -> BoxFuture<'_, Result<(), fred::error::Error>>;
}

impl<C: ClientLike> InitClient for C {
    fn init_once(&self) -> BoxFuture<'_, Result<(), fred::error::Error>> {
        Box::pin(async move { self.init().await.map(|_| ()) })
    }
}

/// Subscribes to the events channel, and returns once Redis has processed the SUBSCRIBE.
async fn subscribe_confirmed(subscriber: &SubscriberClient) -> Result<(), fred::error::Error> {
    subscriber.subscribe(keys::EVENTS).await?;
    confirmed(subscriber).await
}

/// fred answers (P)SUBSCRIBE as soon as it is written to the socket, not when Redis has processed
/// it: an event published right after could still reach Redis first and be lost, with no resync to
/// cover it. Redis answers a connection's commands in order, so once a PING sent after the
/// SUBSCRIBE is answered, the subscription is live.
async fn confirmed(subscriber: &SubscriberClient) -> Result<(), fred::error::Error> {
    subscriber.ping::<Value>(None).await.map(|_| ())
}

/// Moves events from the subscriber connection to the local broadcast channel, and after each
/// reconnect subscribes again and announces a resync.
async fn relay(
    subscriber: SubscriberClient,
    mut messages: broadcast::Receiver<fred::types::Message>,
    mut reconnects: broadcast::Receiver<Server>,
    events: broadcast::Sender<Delivery>,
) {
    loop {
        tokio::select! {
            msg = messages.recv() => match msg {
                Ok(msg) => {
                    let text: Option<String> = msg.value.convert().ok();
                    match text.as_deref().and_then(Event::from_json) {
                        Some(e) => { let _ = events.send(Delivery::Event(e)); }
                        None => tracing::debug!(channel = %msg.channel, "ignoring a message that is not a SpinForge event"),
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => { let _ = events.send(Delivery::Reconnected); }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            server = reconnects.recv() => match server {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let resubscribed = match subscriber.resubscribe_all().await {
                        Ok(()) => confirmed(&subscriber).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = resubscribed {
                        tracing::warn!(error = %e, "could not subscribe again after a Redis reconnect");
                    }
                    tracing::info!("reconnected to Redis; readers reload their state");
                    let _ = events.send(Delivery::Reconnected);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

// Cluster rate limits: per entry, add to this window's counter (and keep the window a few
// seconds), then read the counter of an older window that every edge has written by now.
const RATE_EXCHANGE_SCRIPT: &str = r#"
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local field, add = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  if add > 0 then
    redis.call('HINCRBY', KEYS[2 * i - 1], field, add)
    redis.call('PEXPIRE', KEYS[2 * i - 1], ttl)
  end
  out[i] = tonumber(redis.call('HGET', KEYS[2 * i], field) or '0')
end
return out
"#;
