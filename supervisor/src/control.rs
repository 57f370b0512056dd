//! What the admin API and the hot-deploy watcher may ask of a running supervisor.
//!
//! A [`SupervisorHandle`] is a cheap clone around a bounded queue into the supervisor's own loop,
//! which owns the apps and their tasks: no caller touches an app's state directly, and every
//! request has an answer (or a clear error) within [`CONTROL_DEADLINE`].

use spinforge_state::config::{AppConfig, AppSource, ConfigErrors};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// No control request waits longer than this for the supervisor to take it and answer. A build is
/// started, not awaited (its id comes back at once); a rollback or restart answers once the new
/// spinlets serve, which takes at most their health-check timeout.
pub const CONTROL_DEADLINE: Duration = Duration::from_secs(120);

/// Control requests queued at once; beyond it callers get [`ControlError::Busy`].
pub const CONTROL_QUEUE: usize = 64;

/// Where an app's definition comes from. Only API apps may be changed or deleted through the API;
/// a YAML app is changed by editing the YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file's `apps:`.
    Config,
    /// Created through the admin API (kept in `data_dir/managed/`).
    Api,
    /// A folder or archive dropped into `supervisor.deploy_dir`.
    DeployDir,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
            Origin::DeployDir => "deploy_dir",
        }
    }
}

/// An app as the supervisor runs it.
#[derive(Debug, Clone)]
pub struct ManagedApp {
    pub config: AppConfig,
    pub origin: Origin,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("there is no app `{0}`")]
    UnknownApp(String),
    #[error("app `{0}` has no release {1}")]
    UnknownRelease(String, u64),
    /// The body is not a valid app section: every error, located in it.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// A domain another app already answers on, or a change not allowed in the app's state.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Refused(String),
    #[error("the supervisor is busy; try again")]
    Busy,
    #[error("the supervisor is shutting down")]
    Gone,
    #[error("{0}")]
    Internal(String),
}

/// What the handle sends to the supervisor's loop.
#[derive(Debug)]
pub(crate) enum Request {
    Apps(oneshot::Sender<Vec<ManagedApp>>),
    /// Create or replace an API app from its app section (JSON or YAML text).
    PutApp {
        name: String,
        text: String,
        origin: Origin,
        reply: oneshot::Sender<Result<ManagedApp, ControlError>>,
    },
    DeleteApp {
        name: String,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Build `source` (or the app's own source) and deploy it with no downtime. Answers the build id.
    Deploy {
        app: String,
        source: Option<AppSource>,
        reply: oneshot::Sender<Result<String, ControlError>>,
    },
    /// Serve a kept release again (`None`: the one before the current). Answers its number.
    Rollback {
        app: String,
        release: Option<u64>,
        reply: oneshot::Sender<Result<u64, ControlError>>,
    },
    Lifecycle {
        app: String,
        action: Lifecycle,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Leave every spinlet running and stop the supervisor (for a replacement to adopt them).
    Detach(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Start the app's spinlets now (and keep an idle-timeout app's usual idle stop).
    Start,
    /// Stop its spinlets; the next request wakes it again (like an idle stop).
    Stop,
    /// Replace its spinlets with fresh ones of the same release, without downtime.
    Restart,
}

impl Lifecycle {
    /// The word the API's paths and the dashboard's forms use.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Start => "start",
            Lifecycle::Stop => "stop",
            Lifecycle::Restart => "restart",
        }
    }

    pub fn parse(word: &str) -> Option<Lifecycle> {
        [Lifecycle::Start, Lifecycle::Stop, Lifecycle::Restart]
            .into_iter()
            .find(|l| l.as_str() == word)
    }
}

#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Request>,
}

impl SupervisorHandle {
    pub(crate) fn new() -> (Self, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        (Self { tx }, rx)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ControlError> {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(make(reply)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(ControlError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ControlError::Gone),
        }
        match tokio::time::timeout(CONTROL_DEADLINE, answer).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ControlError::Gone),
            Err(_) => Err(ControlError::Busy),
        }
    }

    /// Every app the supervisor runs, with where it was defined.
    pub async fn apps(&self) -> Result<Vec<ManagedApp>, ControlError> {
        self.ask(Request::Apps).await
    }

    pub async fn app(&self, name: &str) -> Result<ManagedApp, ControlError> {
        self.apps()
            .await?
            .into_iter()
            .find(|a| a.config.name == name)
            .ok_or_else(|| ControlError::UnknownApp(name.to_string()))
    }

    /// Creates or replaces the API app `name` from `text`, an app section as in the YAML's
    /// `apps.<name>` (JSON is YAML). Without `source:` the app waits for its first deploy.
    pub async fn put_app(&self, name: &str, text: &str) -> Result<ManagedApp, ControlError> {
        self.put_app_from(name, text, Origin::Api).await
    }

    pub(crate) async fn put_app_from(
        &self,
        name: &str,
        text: &str,
        origin: Origin,
    ) -> Result<ManagedApp, ControlError> {
        let (name, text) = (name.to_string(), text.to_string());
        self.ask(|reply| Request::PutApp {
            name,
            text,
            origin,
            reply,
        })
        .await?
    }

    /// Stops and forgets an API app (its releases stay on disk until the data folder is cleaned).
    pub async fn delete_app(&self, name: &str) -> Result<(), ControlError> {
        let name = name.to_string();
        self.ask(|reply| Request::DeleteApp { name, reply }).await?
    }

    /// Starts a build of `source` (`None`: the app's configured source); when it succeeds the
    /// new release replaces the running one with no downtime. Returns the build id at once.
    pub async fn deploy(
        &self,
        app: &str,
        source: Option<AppSource>,
    ) -> Result<String, ControlError> {
        let app = app.to_string();
        self.ask(|reply| Request::Deploy { app, source, reply })
            .await?
    }

    /// Serves kept release `release` (`None`: the one before the current) with no downtime.
    pub async fn rollback(&self, app: &str, release: Option<u64>) -> Result<u64, ControlError> {
        let app = app.to_string();
        self.ask(|reply| Request::Rollback {
            app,
            release,
            reply,
        })
        .await?
    }

    /// Ends the supervisor's loop but leaves every spinlet running, for the next supervisor
    /// (an upgrade, a restart) to adopt; answers once the app tasks have let go.
    pub async fn detach(&self) -> Result<(), ControlError> {
        self.ask(Request::Detach).await
    }

    pub async fn lifecycle(&self, app: &str, action: Lifecycle) -> Result<(), ControlError> {
        let app = app.to_string();
        self.ask(|reply| Request::Lifecycle { app, action, reply })
            .await?
    }
}
