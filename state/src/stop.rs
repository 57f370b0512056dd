//! How every part of SpinForge is told to stop: one mechanism, tokio-util's
//! [`CancellationToken`] (child tokens for the tasks a part starts, [`TaskTracker`] for what
//! must finish before it returns), and for the parts that drain, the deadline the stop carries.
//!
//! The one watch channel of this shape left is Pingora's own `ShutdownWatch`, which its
//! `process_new` takes; the edge sets it from its token.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

pub use tokio_util::sync::{CancellationToken, DropGuard};
pub use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

/// How a part should stop.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    /// What is in flight (requests, spinlets) may finish until then.
    pub deadline: Instant,
    /// How long idle keep-alive connections stay open after the listener closed, so that their
    /// next request is still answered (with `Connection: close`) instead of meeting a closed
    /// socket. Worth it when a successor took the listener over; zero on a plain stop.
    pub linger: Duration,
}

impl Stop {
    /// Finish by `deadline`, no linger.
    pub fn at(deadline: Instant) -> Stop {
        Stop {
            deadline,
            linger: Duration::ZERO,
        }
    }
}

/// Asks a running part to stop, and tells the part when it was asked and how. Clones share one
/// signal; the first stop asked for is the one that counts.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    token: CancellationToken,
    stop: Arc<OnceLock<Stop>>,
}

impl StopSignal {
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    /// Asks for `stop` (a later call changes nothing).
    pub fn send(&self, stop: Stop) {
        let _ = self.stop.set(stop);
        self.token.cancel();
    }

    /// Waits until a stop is asked for, and returns it.
    pub async fn requested(&self) -> Stop {
        self.token.cancelled().await;
        self.stop
            .get()
            .copied()
            // Cancelled through `token()` (or a drop guard): at once.
            .unwrap_or_else(|| Stop::at(Instant::now()))
    }

    /// The token cancelled when the stop is asked for: for tasks that need no deadline.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// A guard that stops the part at once when dropped (for owners that may go away early,
    /// such as tests).
    pub fn stop_on_drop(&self) -> DropGuard {
        self.token.clone().drop_guard()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_stop_asked_for_counts() {
        let signal = StopSignal::new();
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.requested().await }
        });
        let first = Instant::now() + Duration::from_secs(5);
        signal.send(Stop::at(first));
        signal.send(Stop::at(Instant::now()));
        assert_eq!(waiting.await.expect("join").deadline, first);
        assert_eq!(signal.requested().await.deadline, first);
    }

    #[tokio::test]
    async fn a_dropped_guard_stops_at_once() {
        let signal = StopSignal::new();
        drop(signal.stop_on_drop());
        let stop = signal.requested().await;
        assert!(stop.deadline <= Instant::now());
        assert_eq!(stop.linger, Duration::ZERO);
    }
}
