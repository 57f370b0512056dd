//! One task per app: it owns the app's release and spinlets, and changes them only in answer to
//! its own messages and to what came of its own work — so two wakes can never start two sets of
//! processes, and no map is shared behind a lock.
//!
//! Split along its seams, one job per module:
//! - [`command`]: what the supervisor tells the task (a coalescing definition, a republish
//!   request, a queue of commands);
//! - [`machine`]: the lifecycle as a state machine, `step(input, now) -> effects`, with no I/O
//!   and no waiting; its state types are in [`state`], its vocabulary in [`effect`];
//! - [`requests`], [`spinlets`], [`rollout`], [`health`], [`adopt`]: the machine's handling of
//!   requests, of its spinlets' starts, exits and stops, its rollouts, its health checks, and
//!   its take-over of a previous supervisor's spinlets;
//! - [`publish`]: the app's records, routes and upstreams — the one place they are written;
//! - [`spawner`] and [`builds`]: processes and builds behind traits (real ones here, fakes in
//!   tests);
//! - [`driver`]: the task that runs a machine against them.

pub mod adopt;
pub mod builds;
pub mod command;
pub mod driver;
pub mod effect;
pub mod health;
pub mod machine;
pub mod publish;
pub mod requests;
pub mod rollout;
pub mod spawner;
pub mod spinlets;
pub mod state;
pub mod timing;

#[cfg(test)]
mod tests;

pub use command::{Command, Definition, Inbox, Outbox};
pub use driver::{AppContext, AppTask};
pub use machine::Machine;
pub use timing::Timing;
