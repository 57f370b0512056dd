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
}

/// Keys with a TTL kept at most (finished builds' statuses and logs).
const MAX_EXPIRING: usize = 400;

#[derive(Debug, Default)]
struct Stream {
    last: (u64, u64),
    entries: VecDeque<((u64, u64), String)>,
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
            for w in writes {
                match w {
                    Write::Set { key, value } => {
                        d.strings.insert(key, value);
                    }
                    Write::Del { key } => {
                        d.strings.remove(&key);
                        d.hashes.remove(&key);
                        d.sets.remove(&key);
                        d.zsets.remove(&key);
                        d.lists.remove(&key);
                        d.streams.remove(&key);
                    }
                    Write::HashReplace { key, fields } => {
                        let fields = fields
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect();
                        d.hashes.insert(key, fields);
                    }
                    Write::SetAdd { key, member } => {
                        d.sets.entry(key).or_default().insert(member);
                    }
                    Write::SetRemove { key, member } => {
                        if let Some(set) = d.sets.get_mut(&key) {
                            set.remove(&member);
                            if set.is_empty() {
                                d.sets.remove(&key);
                            }
                        }
                    }
                    Write::ZAddGreater { key, entries } => {
                        let zset = d.zsets.entry(key).or_default();
                        for (member, score) in entries {
                            let slot = zset.entry(member).or_insert(score);
                            *slot = (*slot).max(score);
                        }
                    }
                    Write::ListPush { key, value } => {
                        d.lists.entry(key).or_default().push_back(value);
                    }
                    Write::ListRemove { key, value } => {
                        if let Some(list) = d.lists.get_mut(&key) {
                            list.retain(|v| *v != value);
                            if list.is_empty() {
                                d.lists.remove(&key);
                            }
                        }
                    }
                    Write::StreamAdd {
                        key,
                        lines,
                        max_len,
                    } => {
                        let stream = d.streams.entry(key).or_default();
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
                        if !d.expiring.contains(&key) {
                            d.expiring.push_back(key);
                        }
                        while d.expiring.len() > MAX_EXPIRING {
                            if let Some(old) = d.expiring.pop_front() {
                                d.strings.remove(&old);
                                d.hashes.remove(&old);
                                d.streams.remove(&old);
                            }
                        }
                    }
                }
            }
        }
        if let Some(e) = event {
            // No receivers is fine: nobody is listening yet.
            let _ = self.events.send(Delivery::Event(e.clone()));
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.data().strings.get(key).cloned()
    }

    pub(crate) fn scan_values(&self, prefix: &str) -> Vec<(String, String)> {
        let d = self.data();
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

    pub(crate) fn zset(&self, key: &str) -> BTreeMap<String, u64> {
        self.data()
            .zsets
            .get(key)
            .map(|z| z.iter().map(|(m, s)| (m.clone(), *s)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn hash(&self, key: &str) -> BTreeMap<String, String> {
        self.data().hashes.get(key).cloned().unwrap_or_default()
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
}

fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
