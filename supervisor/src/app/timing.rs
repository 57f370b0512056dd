//! The durations the lifecycle runs on, in one place, so that tests can shrink them.

use std::time::Duration;

/// How long each step of an app's life may take, and how often things are checked.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Start attempts that may fail in a row, with nothing serving, before the app is failed.
    pub max_start_failures: u32,
    /// A failed app tries again on a wake after this long (an edit or a start tries at once).
    pub failed_retry: Duration,
    /// A spinlet that ran this long before crashing starts its backoff afresh.
    pub stable_after: Duration,
    /// The first crash restart waits this long; each next one twice as long...
    pub backoff_first: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// SIGTERM → SIGKILL.
    pub stop_grace: Duration,
    /// Running spinlets are probed this often...
    pub check_every: Duration,
    /// ...each probe within this...
    pub check_timeout: Duration,
    /// ...and one that fails this many in a row is replaced.
    pub check_failures: u32,
    /// A replaced spinlet drains (finishes what it serves) until every edge reports nothing left
    /// on it, or for the app's `drain_timeout`: then the edges end the streams still open on it
    /// (a WebSocket close, the end of an event stream) and get this long to do so and report,
    /// before it is stopped anyway.
    pub drain_margin: Duration,
    /// How often the edges' reports on a drain are read.
    pub drain_poll: Duration,
    /// SIGTERM → SIGKILL for a spinlet whose drain ran out with requests still on it: they had
    /// their `drain_timeout`, and a handler that waits for them must not stretch it much.
    pub drain_kill_grace: Duration,
    /// What the driver owes an answer for (a start, a probe, a stop) is taken as failed or done
    /// this long after its own deadline, so that nothing waits for ever on a lost answer.
    pub slack: Duration,
}

impl Timing {
    /// The timing SpinForge runs with.
    pub fn new() -> Timing {
        Timing {
            max_start_failures: 5,
            failed_retry: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            backoff_first: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
            check_every: Duration::from_secs(2),
            check_timeout: Duration::from_secs(2),
            check_failures: 3,
            drain_margin: Duration::from_secs(1),
            // Edges report every 250 ms: a drain ends within about half a second of its last
            // request.
            drain_poll: Duration::from_millis(200),
            drain_kill_grace: Duration::from_secs(2),
            // A stop takes up to its SIGKILL deadline plus 5 s of waiting for the kill.
            slack: Duration::from_secs(10),
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::new()
    }
}
