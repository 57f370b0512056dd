//! What the supervisor tells an app's task, and how.
//!
//! Three ways in, each with the delivery its messages need:
//! - the app's **definition** is a `watch`: only the latest one matters, so edits coalesce and
//!   none is ever dropped, however busy the task;
//! - a **republish** request (the store may have lost what the task wrote) is a `Notify`: many
//!   become one, none is lost; each is numbered, and the task says which one it has written
//!   (its first publish counts as the first), so the supervisor knows when the store is whole
//!   again;
//! - everything else is a [`Command`] on a bounded queue. Wakes and idle checks may be dropped
//!   when it is full (they come again); a refused deploy, rollback or lifecycle request is
//!   answered as busy.
//!
//! The task answers a definition by publishing it: [`Outbox::published`] says which version of it
//! the app's routes show, so that the supervisor can move a domain from one app to another in
//! order (the app losing it first).

use super::builds::BuildJob;
use crate::control::{ControlError, Lifecycle};
use spinforge_state::config::AppConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

/// Messages queued per app task; wakes beyond it are dropped (edges repeat them every second).
pub const QUEUE: usize = 64;

pub enum Command {
    /// An edge holds requests for this app.
    Wake,
    /// The app's last access (ms) as the edges recorded it.
    IdleCheck { last_access_ms: Option<u64> },
    /// Build `app` (its source may be new) under `ticket` (already queued: its id is out) and
    /// roll the result out. `app` becomes the app's definition in the task.
    Deploy {
        ticket: Box<dyn BuildJob>,
        app: Box<AppConfig>,
    },
    /// Serve a kept release again (`None`: the one before the current).
    Rollback {
        release: Option<u64>,
        reply: oneshot::Sender<Result<u64, ControlError>>,
    },
    Lifecycle {
        action: Lifecycle,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Stop everything by `deadline`, then answer on `done`. `forget`: the app is removed, so
    /// its routes, record and upstreams go first.
    Shutdown {
        deadline: Instant,
        forget: bool,
        done: oneshot::Sender<()>,
    },
    /// Let go of the spinlets without stopping them (the supervisor is being replaced), then
    /// answer on `done`.
    Detach { done: oneshot::Sender<()> },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::Wake => "Wake",
            Command::IdleCheck { .. } => "IdleCheck",
            Command::Deploy { .. } => "Deploy",
            Command::Rollback { .. } => "Rollback",
            Command::Lifecycle { .. } => "Lifecycle",
            Command::Shutdown { .. } => "Shutdown",
            Command::Detach { .. } => "Detach",
        };
        f.write_str(name)
    }
}

/// An app's definition as the supervisor last gave it.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Counts up with every change.
    pub version: u64,
    pub config: Arc<AppConfig>,
}

/// The supervisor's side of an app task.
#[derive(Debug)]
pub struct Outbox {
    pub commands: mpsc::Sender<Command>,
    definition: watch::Sender<Definition>,
    republish: Arc<Notify>,
    /// The newest republish asked for (the task's first publish is the first).
    republish_asked: Arc<AtomicU64>,
    /// The newest one the task has written.
    republished: watch::Receiver<u64>,
    published: watch::Receiver<u64>,
}

/// The task's side.
#[derive(Debug)]
pub struct Inbox {
    pub commands: mpsc::Receiver<Command>,
    pub definition: watch::Receiver<Definition>,
    pub republish: Arc<Notify>,
    republish_asked: Arc<AtomicU64>,
    republished: watch::Sender<u64>,
    /// The version of the definition the task has published.
    pub published: watch::Sender<u64>,
}

impl Inbox {
    /// Says the task has (and has published) definition `version`: what [`Outbox::published`]
    /// waits for. Versions only go up.
    pub fn acknowledge(&self, version: u64) {
        self.published.send_if_modified(|v| {
            let newer = *v < version;
            *v = (*v).max(version);
            newer
        });
    }

    /// The newest republish asked for: the one a write of everything from now on answers.
    pub fn republish_asked(&self) -> u64 {
        self.republish_asked.load(Ordering::SeqCst)
    }

    /// Says the task has written everything it owns as of republish `generation`.
    pub fn republished(&self, generation: u64) {
        self.republished.send_if_modified(|v| {
            let newer = *v < generation;
            *v = (*v).max(generation);
            newer
        });
    }
}

/// A new task's channels, its definition at version 1.
pub fn channel(config: AppConfig) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (definition_tx, definition) = watch::channel(Definition {
        version: 1,
        config: Arc::new(config),
    });
    let republish = Arc::new(Notify::new());
    let republish_asked = Arc::new(AtomicU64::new(1));
    let (republished_tx, republished) = watch::channel(0);
    let (published_tx, published) = watch::channel(0);
    (
        Outbox {
            commands: tx,
            definition: definition_tx,
            republish: republish.clone(),
            republish_asked: republish_asked.clone(),
            republished,
            published,
        },
        Inbox {
            commands: rx,
            definition,
            republish,
            republish_asked,
            republished: republished_tx,
            published: published_tx,
        },
    )
}

impl Outbox {
    /// Hands the task a new definition (it replaces any the task has not seen yet); returns its
    /// version.
    pub fn define(&self, config: AppConfig) -> u64 {
        let mut version = 0;
        self.definition.send_modify(|d| {
            d.version += 1;
            d.config = Arc::new(config);
            version = d.version;
        });
        version
    }

    /// Asks the task to write everything it owns in the store again.
    pub fn republish(&self) {
        self.republish_asked.fetch_add(1, Ordering::SeqCst);
        self.republish.notify_one();
    }

    /// Ends once the task has written everything it owns as of the newest republish asked for
    /// now (or its first publish), or has ended.
    pub fn written(&self) -> impl Future<Output = ()> + Send + 'static {
        let generation = self.republish_asked.load(Ordering::SeqCst);
        let mut rx = self.republished.clone();
        async move {
            let _ = rx.wait_for(|v| *v >= generation).await;
        }
    }

    /// Waits until the task has published `version` of its definition (or a later one), at most
    /// `limit`; false if it has not by then.
    pub async fn published(&self, version: u64, limit: Duration) -> bool {
        let mut rx = self.published.clone();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|v| *v >= version)).await,
            Ok(Ok(_))
        )
    }
}
