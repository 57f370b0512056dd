//! The in-memory backend: Redis' data types in ordered maps behind one mutex (never held across an
//! `.await`), and a broadcast channel for events.

use super::{Delivery, EVENT_BUFFER, Write};
use crate::events::Event;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
}
