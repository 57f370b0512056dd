//! Builds as the app task sees them: ask for one, run it, cancel it. [`Builder`] and its
//! [`Ticket`]s do it for real (every build recorded and ended exactly once, see
//! [`crate::build::queue`]); tests put fakes in their place.

use crate::build::BuildError;
use crate::build::queue::{Builder, Ticket};
use crate::release::Release;
use futures::future::BoxFuture;
use spinforge_state::config::AppConfig;

/// How a build ended, for the app.
#[derive(Debug)]
pub enum BuildEnd {
    Built { release: Box<Release>, reused: bool },
    Failed(String),
    Cancelled,
}

/// One build, queued (its id is known to every reader) and not yet run.
pub trait BuildJob: Send + Sync + 'static {
    fn id(&self) -> &str;
    /// Builds `app` (waiting for a slot first) and records how it ended.
    fn run(self: Box<Self>, app: AppConfig) -> BoxFuture<'static, BuildEnd>;
    /// Ends it as failed without running it.
    fn fail(self: Box<Self>, reason: String) -> BoxFuture<'static, ()>;
}

/// Where builds come from.
pub trait Builds: Send + Sync + std::fmt::Debug + 'static {
    /// A new build of `app`, recorded as queued when this returns.
    fn enqueue<'a>(&'a self, app: &'a AppConfig) -> BoxFuture<'a, Box<dyn BuildJob>>;
    /// Cancels a queued or running build; it still ends (as cancelled).
    fn cancel(&self, id: &str);
    /// Releases kept per app (`supervisor.builds.keep_releases`).
    fn keep_releases(&self) -> usize;
}

impl Builds for Builder {
    fn enqueue<'a>(&'a self, app: &'a AppConfig) -> BoxFuture<'a, Box<dyn BuildJob>> {
        Box::pin(async move { Box::new(Builder::enqueue(self, app).await) as Box<dyn BuildJob> })
    }

    fn cancel(&self, id: &str) {
        Builder::cancel(self, id);
    }

    fn keep_releases(&self) -> usize {
        self.context().limits.keep_releases
    }
}

impl BuildJob for Ticket {
    fn id(&self) -> &str {
        Ticket::id(self)
    }

    fn run(self: Box<Self>, app: AppConfig) -> BoxFuture<'static, BuildEnd> {
        Box::pin(async move {
            match (*self).run(&app).await.into_result() {
                Ok(outcome) => BuildEnd::Built {
                    release: Box::new(outcome.release),
                    reused: outcome.reused,
                },
                Err(BuildError::Cancelled) => BuildEnd::Cancelled,
                Err(e) => BuildEnd::Failed(e.to_string()),
            }
        })
    }

    fn fail(self: Box<Self>, reason: String) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = (*self).fail(reason).await;
        })
    }
}
