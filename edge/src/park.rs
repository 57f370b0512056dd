//! Idle plain keep-alive connections, held as their sockets alone.
//!
//! A plain HTTP/1.1 connection whose next request has not begun [`AFTER`] its last answer, with
//! nothing of it read, leaves its task: the fast path gives the socket back ([`Idle`]), the
//! task ends — its futures, Pingora's stream and socket digest, tokio's registration, ~2.7 KB in
//! all — and the thread's park holds the socket in an epoll set of its own, with the
//! connection's keep-alive deadline, its per-IP count and its place in the open-connections
//! gauge: under 200 bytes. When the client sends (or closes), the socket goes back to tokio and
//! a new task serves it from its first read, as if it had never left; at its deadline, or when
//! the thread stops, it is closed. NGINX, too, frees what a keep-alive connection holds while it
//! idles; HTTPS and HTTP/2 connections keep their TLS state and stay in their tasks.
//!
//! Parking waits [`AFTER`] so that a busy connection (the next request a few milliseconds
//! behind the answer) never pays for it: a park and a return cost six system calls and a task.
//!
//! What the parked connections' tasks held is then free in the allocator, but glibc keeps such
//! memory resident for reuse: after a crowd of connections has parked, the park asks it to
//! give free pages back ([`Trim`]), so that an edge whose burst of clients went idle shrinks
//! back rather than keep its peak.

use crate::limits::ConnectionSlot;
use crate::metrics::Gauge;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use spinforge_state::stop::CancellationToken;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a plain connection waits in its task for its next request before it is parked.
pub const AFTER: Duration = Duration::from_millis(250);

/// Connections on their way into the park at once (per thread). When it is full, a connection
/// stays in its task and waits there instead: nothing is refused.
const QUEUE: usize = 1024;

/// A plain connection the fast path gave back: idle, with nothing read of its next request.
#[derive(Debug)]
pub struct Idle {
    pub socket: std::net::TcpStream,
    /// Its keep-alive deadline: closed then if nothing came.
    pub until: Instant,
    /// The open-connections gauge, held while parked.
    pub open: Gauge,
}

/// An idle connection with its per-IP count, on its way into the park or back out of it.
#[derive(Debug)]
pub struct Parked {
    pub idle: Idle,
    pub slot: Option<ConnectionSlot>,
}

/// Where a thread's connection tasks send the connections they park.
#[derive(Debug, Clone)]
pub struct Entrance(mpsc::Sender<Parked>);

/// The park's side of the channel: [`keep`] takes it.
#[derive(Debug)]
pub struct Inbox(mpsc::Receiver<Parked>);

pub fn channel() -> (Entrance, Inbox) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Entrance(tx), Inbox(rx))
}

impl Entrance {
    /// Parks `p`, or gives it back when the park is full or gone (the thread is stopping).
    pub fn park(&self, p: Parked) -> Result<(), Parked> {
        self.0.try_send(p).map_err(|e| match e {
            mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
        })
    }
}

/// Parks since the last trim before another is worth it (~2.5 KB freed each).
const TRIM_AFTER: u32 = 256;
/// A trim waits until no connection has parked for this long (a crowd parks over a few
/// hundred milliseconds)...
const TRIM_QUIET: Duration = Duration::from_millis(200);
/// ...but no longer than this after the crowd began; and the process trims at most this often.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// When to give free memory back to the system: after [`TRIM_AFTER`] parks, once they pause.
#[derive(Default)]
struct Trim {
    parks: u32,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Trim {
    fn parked(&mut self, now: Instant) {
        self.parks += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending trim is due, if one is.
    fn due(&self) -> Option<Instant> {
        if self.parks < TRIM_AFTER {
            return None;
        }
        let (first, last) = (self.first?, self.last?);
        Some((last + TRIM_QUIET).min(first + TRIM_EVERY))
    }

    /// Trims (on a blocking thread: it walks the allocator's free lists) unless another thread
    /// of the edge did within [`TRIM_EVERY`].
    fn run(&mut self) {
        *self = Trim::default();
        static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
        {
            let Ok(mut last) = LAST.try_lock() else {
                return; // another thread is trimming now
            };
            let now = std::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < TRIM_EVERY) {
                return;
            }
            *last = Some(now);
        }
        tokio::task::spawn_blocking(release_free_memory);
    }
}

/// Gives the allocator's free pages back to the system (glibc's `malloc_trim`, which also
/// releases free pages inside its heaps, not just at their tops).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: no preconditions; glibc locks each arena while it trims it.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// The parked connections' keep-alive deadlines, soonest first. A connection that leaves the
/// park early leaves its entry behind (skipped when it comes up, by its serial); so that a
/// client parking and returning over and over cannot grow the heap past its parked
/// connections, it is rebuilt from them once stale entries outnumber them.
#[derive(Default)]
struct Deadlines(BinaryHeap<Reverse<(Instant, usize, u64)>>);

impl Deadlines {
    fn push(&mut self, until: Instant, key: usize, serial: u64) {
        self.0.push(Reverse((until, key, serial)));
    }

    /// Rebuilds the heap from the connections still parked, if stale entries outnumber them.
    fn compact(&mut self, held: &slab::Slab<Held>) {
        if self.0.len() > 2 * held.len() + 64 {
            self.0 = held
                .iter()
                .map(|(key, h)| Reverse((h.parked.idle.until, key, h.serial)))
                .collect();
        }
    }

    fn soonest(&self) -> Option<Instant> {
        self.0.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The next entry due by `now`: (place, serial).
    fn pop_due(&mut self, now: Instant) -> Option<(usize, u64)> {
        let &Reverse((t, key, serial)) = self.0.peek()?;
        if t > now {
            return None;
        }
        self.0.pop();
        Some((key, serial))
    }

    fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

/// A connection in the park.
struct Held {
    parked: Parked,
    /// Told apart from a later connection in the same slab place, for the deadline heap.
    serial: u64,
}

/// Holds this thread's parked connections: each goes to `resume` when its client sends or
/// closes, is closed at its deadline, and all are closed when `stop` is cancelled. Runs on the
/// thread's runtime; returns after `stop`.
pub async fn keep(mut inbox: Inbox, stop: CancellationToken, resume: impl Fn(Parked)) {
    let watched = Poll::new().and_then(|poll| {
        let registry = poll.registry().try_clone()?;
        // SAFETY: the epoll descriptor is the `Poll`'s, which the `AsyncFd` owns: it stays open
        // while registered, and is registered with tokio nowhere else.
        #[allow(unsafe_code)]
        let ready = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok((ready, registry))
    });
    let (mut ready, registry) = match watched {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot make the idle connections' epoll set; none is parked");
            inbox.0.close();
            // What was sent before the close goes back to serving.
            while let Some(p) = inbox.0.recv().await {
                resume(p);
            }
            return;
        }
    };
    let mut held: slab::Slab<Held> = slab::Slab::new();
    let mut deadlines = Deadlines::default();
    let mut serial = 0u64;
    let mut events = Events::with_capacity(256);
    let mut trim = Trim::default();
    'park: loop {
        let soonest = deadlines.soonest();
        let trim_due = trim.due();
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            guard = ready.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                // (A failed set closes what it holds, and parks nothing more: connections then
                // wait in their tasks.)
                // Drained until the set has nothing ready; a connection that turns readable
                // meanwhile makes the set readable again (a new edge for tokio).
                loop {
                    if let Err(e) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        if e.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        tracing::warn!(error = %e, "the idle connections' epoll set failed");
                        break 'park;
                    }
                    if events.is_empty() {
                        guard.clear_ready();
                        break;
                    }
                    for event in &events {
                        // Each connection is deregistered as it leaves (below and at its
                        // deadline), so a place in the slab is never reused while an event
                        // for its former holder can still come.
                        let Some(h) = held.try_remove(event.token().0) else { continue };
                        let fd = h.parked.idle.socket.as_raw_fd();
                        if registry.deregister(&mut SourceFd(&fd)).is_ok() {
                            resume(h.parked);
                        }
                    }
                }
            }
            p = inbox.0.recv() => {
                let Some(p) = p else { break };
                if p.idle.until <= Instant::now() {
                    continue; // its keep-alive is over: closed
                }
                let place = held.vacant_entry();
                let key = place.key();
                let fd = p.idle.socket.as_raw_fd();
                // Edge-triggered; a socket that is readable already is reported at once.
                if registry.register(&mut SourceFd(&fd), Token(key), Interest::READABLE).is_err() {
                    resume(p); // served in a task, as if never parked
                    continue;
                }
                serial += 1;
                deadlines.push(p.idle.until, key, serial);
                place.insert(Held { parked: p, serial });
                deadlines.compact(&held);
                trim.parked(Instant::now());
            }
            _ = tokio::time::sleep_until(trim_due.unwrap_or_else(Instant::now)), if trim_due.is_some() => {
                trim.run();
            }
            _ = tokio::time::sleep_until(soonest.unwrap_or_else(Instant::now)), if soonest.is_some() => {
                let now = Instant::now();
                while let Some((key, s)) = deadlines.pop_due(now) {
                    if held.get(key).is_some_and(|h| h.serial == s) {
                        let h = held.remove(key);
                        let fd = h.parked.idle.socket.as_raw_fd();
                        let _ = registry.deregister(&mut SourceFd(&fd));
                        drop(h); // closed: the keep-alive timeout
                    }
                }
                // Spare capacity from a crowd that has gone.
                if held.is_empty() {
                    held.shrink_to_fit();
                    deadlines.shrink_to_fit();
                }
            }
        }
    }
    // Stopping: every parked connection is idle, so it closes now (as the fast path closes an
    // idle connection when the service stops).
    drop(held);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn held(socket: &std::net::TcpListener, until: Instant, serial: u64) -> Held {
        let addr = socket.local_addr().expect("address");
        Held {
            parked: Parked {
                idle: Idle {
                    socket: std::net::TcpStream::connect(addr).expect("connect"),
                    until,
                    open: Arc::new(crate::metrics::Metrics::default()).connection(),
                },
                slot: None,
            },
            serial,
        }
    }

    #[tokio::test]
    async fn connections_parking_and_leaving_over_and_over_do_not_grow_the_deadlines() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut slab = slab::Slab::new();
        let mut deadlines = Deadlines::default();
        let until = Instant::now() + Duration::from_secs(60);
        // Ten stay parked; one more parks and leaves (its client sends) ten thousand times.
        for serial in 0..10 {
            let key = slab.insert(held(&listener, until, serial));
            deadlines.push(until, key, serial);
        }
        let comer = held(&listener, until, 10);
        let mut comer = Some(comer);
        for serial in 10..10_010u64 {
            let mut h = comer.take().expect("back");
            h.serial = serial;
            let key = slab.insert(h);
            deadlines.push(until, key, serial);
            deadlines.compact(&slab);
            let kept = deadlines.0.len();
            assert!(
                kept <= 2 * slab.len() + 64,
                "{kept} deadlines for {} parked",
                slab.len()
            );
            comer = Some(slab.remove(key));
        }
        // Past the deadline, exactly the ten still parked come up, each once.
        let mut due = Vec::new();
        while let Some((key, serial)) = deadlines.pop_due(until) {
            if slab.get(key).is_some_and(|h: &Held| h.serial == serial) {
                due.push(serial);
            }
        }
        due.sort_unstable();
        assert_eq!(due, (0..10).collect::<Vec<_>>());
    }
}
