//! Events on the `spinforge:events` channel. Pub/sub may drop them: a reader that (re)subscribes
//! reloads what it caches first (see [`crate::Signal::Resync`]).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `routes:{domain}` was written or deleted.
    RouteChanged { domain: String },
    /// `upstreams:{app}` changed: a spinlet became healthy or went away.
    UpstreamsChanged { app: String },
    /// A spinlet moved to another state.
    SpinletState {
        id: String,
        app: String,
        state: String,
    },
    /// A build moved to another state: `queued`, `running`, then exactly one of `succeeded`,
    /// `failed` or `cancelled` (its `build:status:{id}` has the details).
    BuildState {
        id: String,
        app: String,
        state: String,
    },
    /// An edge wants `app` running: it holds requests for it.
    Wake { app: String },
    /// `certs:{domain}` was written or deleted: edges reload that certificate.
    CertUpdated { domain: String },
    /// `acme:challenge:{token}` was written or deleted: edges reload their challenge answers.
    ChallengeChanged { token: String },
}

impl Event {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events always serialize")
    }
    pub fn from_json(text: &str) -> Option<Event> {
        serde_json::from_str(text).ok()
    }
}
