//! The in-memory backend: Redis' data types in ordered maps behind one mutex (never held across an
//! `.await`), and a broadcast channel for events.

use super::{Delivery, EVENT_BUFFER, Write};
use crate::events::Event;
use crate::records::LogEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::broadcast;

#[derive(Debug)]
pub(crate) struct Embedded {
    data: Mutex<Data>,
    events: broadcast::Sender<Delivery>,
}

#[derive(Debug, Default)]
struct Data {
    strings: BTreeMap<String, String>,
    hashes: BTreeMap<String, BTreeMap<String, String>>,
    sets: HashMap<String, BTreeSet<String>>,
    zsets: HashMap<String, BTreeMap<String, u64>>,
    lists: HashMap<String, VecDeque<String>>,
    streams: HashMap<String, Stream>,
    /// Keys given a TTL, oldest first. There is no clock here: beyond [`MAX_EXPIRING`] keys the
    /// oldest are deleted, which bounds memory the way the TTL does on Redis.
    expiring: VecDeque<String>,
    /// String and hash keys with an expiry (ms since the epoch); expired ones read as absent.
    expires: HashMap<String, u64>,
    /// The fencing counter for locks.
    fencing: u64,
    /// Cluster rate-limit counters: window → (app, client) → count. Only recent windows kept.
    rate_windows: BTreeMap<u64, HashMap<(String, String), u64>>,
}

/// Rate-count windows the embedded store keeps behind the newest one.
const RATE_WINDOWS_KEPT: u64 = 16;

/// Keys with a TTL kept at most (finished builds' statuses and logs).
const MAX_EXPIRING: usize = 400;

#[derive(Debug, Default)]
struct Stream {
    last: (u64, u64),
    entries: VecDeque<((u64, u64), String)>,
}

impl Data {
    /// Drops `key` if its expiry has passed.
    fn expire(&mut self, key: &str, now: u64) {
        if self.expires.get(key).is_some_and(|at| *at <= now) {
            self.expires.remove(key);
            self.strings.remove(key);
            self.hashes.remove(key);
        }
    }

    fn expire_all(&mut self, now: u64) {
        let due: Vec<String> = self
            .expires
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.expires.remove(&k);
            self.strings.remove(&k);
            self.hashes.remove(&k);
        }
    }

    fn apply(&mut self, writes: Vec<Write>) {
        for w in writes {
            match w {
                Write::Set { key, value } => {
                    self.expires.remove(&key);
                    self.strings.insert(key, value);
                }
                Write::SetPx { key, value, ttl_ms } => {
                    self.expires.insert(key.clone(), crate::now_ms() + ttl_ms);
                    self.strings.insert(key, value);
                }
                Write::Del { key } => {
                    self.expires.remove(&key);
                    self.strings.remove(&key);
                    self.hashes.remove(&key);
                    self.sets.remove(&key);
                    self.zsets.remove(&key);
                    self.lists.remove(&key);
                    self.streams.remove(&key);
                }
                Write::HashReplace { key, fields } => {
                    let fields = fields
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    self.hashes.insert(key, fields);
                }
                Write::HashOf {
                    key,
                    fields,
                    ttl_ms,
                } => {
                    self.expires.remove(&key);
                    self.hashes.remove(&key);
                    if !fields.is_empty() {
                        if let Some(ttl) = ttl_ms {
                            self.expires.insert(key.clone(), crate::now_ms() + ttl);
                        }
                        self.hashes.insert(key, fields.into_iter().collect());
                    }
                }
                Write::SetAdd { key, member } => {
                    self.sets.entry(key).or_default().insert(member);
                }
                Write::SetRemove { key, member } => {
                    if let Some(set) = self.sets.get_mut(&key) {
                        set.remove(&member);
                        if set.is_empty() {
                            self.sets.remove(&key);
                        }
                    }
                }
                Write::ListPush { key, value } => {
                    self.lists.entry(key).or_default().push_back(value);
                }
                Write::ListKeepLast { key, keep } => {
                    if let Some(list) = self.lists.get_mut(&key) {
                        while list.len() > keep {
                            list.pop_front();
                        }
                        if list.is_empty() {
                            self.lists.remove(&key);
                        }
                    }
                }
                Write::ListRemove { key, value } => {
                    if let Some(list) = self.lists.get_mut(&key) {
                        list.retain(|v| *v != value);
                        if list.is_empty() {
                            self.lists.remove(&key);
                        }
                    }
                }
                Write::StreamAdd {
                    key,
                    lines,
                    max_len,
                } => {
                    let stream = self.streams.entry(key).or_default();
                    let now = crate::now_ms();
                    for line in lines {
                        let id = if now > stream.last.0 {
                            (now, 0)
                        } else {
                            (stream.last.0, stream.last.1 + 1)
                        };
                        stream.last = id;
                        stream.entries.push_back((id, line));
                    }
                    while stream.entries.len() > max_len {
                        stream.entries.pop_front();
                    }
                }
                Write::Expire { key, .. } => {
                    if !self.expiring.contains(&key) {
                        self.expiring.push_back(key);
                    }
                    while self.expiring.len() > MAX_EXPIRING {
                        if let Some(old) = self.expiring.pop_front() {
                            self.strings.remove(&old);
                            self.hashes.remove(&old);
                            self.streams.remove(&old);
                        }
                    }
                }
                Write::ZAddGreater { key, entries } => {
                    let zset = self.zsets.entry(key).or_default();
                    for (member, score) in entries {
                        let slot = zset.entry(member).or_insert(score);
                        *slot = (*slot).max(score);
                    }
                }
            }
        }
    }
}

impl Embedded {
    pub(crate) fn new() -> Self {
        Self {
            data: Mutex::new(Data::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave a half-applied batch worth refusing to read:
        // every write below is a single map operation.
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Delivery> {
        self.events.subscribe()
    }

    pub(crate) fn write(&self, writes: Vec<Write>, event: Option<&Event>) {
        {
            let mut d = self.data();
            d.expire_all(crate::now_ms());
            d.apply(writes);
        }
        if let Some(e) = event {
            // No receivers is fine: nobody is listening yet.
            let _ = self.events.send(Delivery::Event(e.clone()));
        }
    }

    /// Applies `writes` (and sends `event`) only while `lock_key` holds `lock_value`.
    pub(crate) fn write_if(
        &self,
        lock_key: &str,
        lock_value: &str,
        writes: Vec<Write>,
        event: Option<&Event>,
    ) -> bool {
        {
            let mut d = self.data();
            d.expire(lock_key, crate::now_ms());
            if d.strings.get(lock_key).map(String::as_str) != Some(lock_value) {
                return false;
            }
            d.apply(writes);
        }
        if let Some(e) = event {
            let _ = self.events.send(Delivery::Event(e.clone()));
        }
        true
    }

    pub(crate) fn try_lock(&self, key: &str, owner: &str, ttl_ms: u64) -> Option<u64> {
        let mut d = self.data();
        let now = crate::now_ms();
        d.expire(key, now);
        if d.strings.contains_key(key) {
            return None;
        }
        d.fencing += 1;
        let fence = d.fencing;
        d.strings
            .insert(key.to_string(), format!("{owner} {fence}"));
        d.expires.insert(key.to_string(), now + ttl_ms);
        Some(fence)
    }

    pub(crate) fn extend_lock(&self, key: &str, value: &str, ttl_ms: u64) -> bool {
        let mut d = self.data();
        let now = crate::now_ms();
        d.expire(key, now);
        if d.strings.get(key).map(String::as_str) != Some(value) {
            return false;
        }
        d.expires.insert(key.to_string(), now + ttl_ms);
        true
    }

    pub(crate) fn unlock(&self, key: &str, value: &str) {
        let mut d = self.data();
        d.expire(key, crate::now_ms());
        if d.strings.get(key).map(String::as_str) == Some(value) {
            d.strings.remove(key);
            d.expires.remove(key);
        }
    }

    pub(crate) fn hash(&self, key: &str) -> Option<BTreeMap<String, String>> {
        self.data().hashes.get(key).cloned()
    }

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        let mut d = self.data();
        d.expire(key, crate::now_ms());
        d.strings.get(key).cloned()
    }

    pub(crate) fn scan_values(&self, prefix: &str) -> Vec<(String, String)> {
        let mut d = self.data();
        d.expire_all(crate::now_ms());
        d.strings
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(crate) fn scan_hashes(&self, prefix: &str) -> Vec<(String, BTreeMap<String, String>)> {
        let d = self.data();
        d.hashes
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(crate) fn members_of(&self, keys: &[String]) -> Vec<Vec<String>> {
        let d = self.data();
        keys.iter()
            .map(|k| {
                d.sets
                    .get(k)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// For each `(set key, hash key)`: the set's members (sorted) and the hash's fields.
    pub(crate) fn sets_and_hashes(
        &self,
        keys: &[(String, String)],
    ) -> Vec<(Vec<String>, BTreeMap<String, String>)> {
        let mut d = self.data();
        let now = crate::now_ms();
        keys.iter()
            .map(|(set, hash)| {
                d.expire(hash, now);
                let members = d
                    .sets
                    .get(set)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                (members, d.hashes.get(hash).cloned().unwrap_or_default())
            })
            .collect()
    }

    /// For each hash in `keys`, the values of `fields` (`None`: absent), as HMGET answers.
    pub(crate) fn hash_fields(
        &self,
        keys: &[String],
        fields: &[String],
    ) -> Vec<Vec<Option<String>>> {
        let mut d = self.data();
        let now = crate::now_ms();
        keys.iter()
            .map(|k| {
                d.expire(k, now);
                let hash = d.hashes.get(k);
                fields
                    .iter()
                    .map(|f| hash.and_then(|h| h.get(f)).cloned())
                    .collect()
            })
            .collect()
    }

    pub(crate) fn zset(&self, key: &str) -> BTreeMap<String, u64> {
        self.data()
            .zsets
            .get(key)
            .map(|z| z.iter().map(|(m, s)| (m.clone(), *s)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn list(&self, key: &str) -> Vec<String> {
        self.data()
            .lists
            .get(key)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn stream_after(
        &self,
        key: &str,
        after: Option<&str>,
        count: usize,
    ) -> Vec<LogEntry> {
        let after = after.and_then(parse_stream_id);
        let d = self.data();
        let Some(stream) = d.streams.get(key) else {
            return Vec::new();
        };
        stream
            .entries
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .take(count)
            .map(|((ms, seq), line)| LogEntry {
                id: format!("{ms}-{seq}"),
                line: line.clone(),
            })
            .collect()
    }

    pub(crate) fn exchange_rate_counts(
        &self,
        add_window: u64,
        read_window: u64,
        entries: &[super::RateCount],
    ) -> Vec<u64> {
        let mut d = self.data();
        let windows = &mut d.rate_windows;
        for e in entries.iter().filter(|e| e.add > 0) {
            *windows
                .entry(add_window)
                .or_default()
                .entry((e.app.clone(), e.client.clone()))
                .or_default() += e.add;
        }
        let newest = windows.keys().next_back().copied().unwrap_or(0);
        windows.retain(|w, _| *w + RATE_WINDOWS_KEPT >= newest);
        let read = windows.get(&read_window);
        entries
            .iter()
            .map(|e| {
                read.and_then(|w| w.get(&(e.app.clone(), e.client.clone())))
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    }
}

fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
