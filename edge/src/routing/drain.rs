//! Spinlets that drain, as the edge sees them: out of routing, still finishing what this edge
//! sends them. The edge counts what it still has on each ([`crate::balance::Loads`]), reports
//! it through the store (`background.rs`), and at the drain's close time ends what is still
//! open cleanly — a WebSocket with a close frame (1001, going away), an event stream at the end
//! of an event — instead of letting the spinlet's stop cut it. The pieces here are the ones
//! every front end shares: when to close ([`close_time`]), and where a stream may be ended
//! ([`EventEnds`], [`WsFrames`]).

use crate::sync::Snapshot;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One draining spinlet of an app, from `drains:{app}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draining {
    pub spinlet: Arc<str>,
    pub addr: SocketAddr,
    /// When what is still open on it is ended (ms since the epoch).
    pub close_at_ms: u64,
}

/// After the close time, how long an event stream may take to reach the end of its current
/// event; then it ends anyway (with its framing complete where it can be). Shorter than the
/// supervisor's margin between the close time and the spinlet's stop.
pub const EVENT_END_GRACE: Duration = Duration::from_millis(500);

/// Resolves when the long-lived streams this edge has open to `addr` of app `app` must end:
/// at that spinlet's drain close time. Pending while `addr` does not drain (it wakes on every
/// routing-table swap to look again: a table holds the drains).
pub async fn close_time(snapshot: &Snapshot, app: &str, addr: SocketAddr) {
    // Subscribed before looking, so no swap between the two is missed.
    let mut changes = snapshot.changes();
    loop {
        let close_at = snapshot
            .load()
            .app(app)
            .and_then(|e| e.drain_of(addr))
            .map(|d| d.close_at_ms);
        if let Some(ms) = close_at {
            let wait = ms.saturating_sub(spinforge_state::now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
            return;
        }
        if changes.changed().await.is_err() {
            // The edge is stopping: its own shutdown ends the stream.
            std::future::pending::<()>().await;
        }
    }
}

/// Follows an event stream's data (`text/event-stream`, decoded from its HTTP framing) to know
/// where one event ends: after a blank line, the line ends being CRLF, LF or a lone CR. Comment
/// lines (`:` first) start no event, so a stream of keep-alive comments is between events after
/// each of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventEnds {
    /// The current line has begun.
    in_line: bool,
    /// ...with a `:`.
    comment: bool,
    /// A field line came since the last blank line: an event is being sent.
    open: bool,
    /// The last byte was a CR (a following LF belongs to it).
    after_cr: bool,
}

impl EventEnds {
    /// Nothing of an event has been sent since the last one ended.
    pub fn between(&self) -> bool {
        !self.in_line && !self.open
    }

    fn byte(&mut self, b: u8) {
        if std::mem::take(&mut self.after_cr) && b == b'\n' {
            return;
        }
        match b {
            b'\r' | b'\n' => {
                if std::mem::take(&mut self.in_line) {
                    self.open |= !self.comment;
                } else {
                    self.open = false; // a blank line: the event is dispatched
                }
                self.after_cr = b == b'\r';
            }
            _ if !self.in_line => {
                self.in_line = true;
                self.comment = b == b':';
            }
            _ => {}
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            self.byte(b);
        }
    }

    /// Feeds `data` up to the first point between two events and says how much that is (0:
    /// between events already); `None` when there is no such point in it (all of it was fed).
    pub fn until_between(&mut self, data: &[u8]) -> Option<usize> {
        if self.between() {
            return Some(0);
        }
        for (i, &b) in data.iter().enumerate() {
            self.byte(b);
            if self.between() {
                // A CRLF ends with its LF.
                if b == b'\r' && data.get(i + 1) == Some(&b'\n') {
                    self.after_cr = false;
                    return Some(i + 2);
                }
                return Some(i + 1);
            }
        }
        None
    }
}

/// Follows the server-to-client half of a WebSocket (RFC 6455 §5.2) to know where one frame
/// ends, so that a close frame the edge adds never lands inside one.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsFrames {
    head: [u8; 14],
    /// Bytes of the next frame's header gathered so far.
    have: usize,
    /// Payload bytes left of the current frame.
    left: u64,
}

impl WsFrames {
    pub fn between(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len() as u64);
                self.left -= n;
                data = &data[n as usize..];
                continue;
            }
            self.head[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have < 2 {
                continue;
            }
            let h = &self.head;
            let (len_bytes, short) = match h[1] & 0x7f {
                126 => (2, None),
                127 => (8, None),
                n => (0, Some(u64::from(n))),
            };
            let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + len_bytes + mask {
                continue;
            }
            self.left = short.unwrap_or_else(|| {
                h[2..2 + len_bytes]
                    .iter()
                    .fold(0u64, |n, b| (n << 8) | u64::from(*b))
            });
            self.have = 0;
        }
    }
}

/// A close frame from the server side (unmasked), status 1001 "going away": the endpoint is
/// leaving (RFC 6455 §7.4.1).
pub const WS_GOING_AWAY: &[u8] = &[
    0x88, 12, 0x03, 0xE9, b'g', b'o', b'i', b'n', b'g', b' ', b'a', b'w', b'a', b'y',
];

/// A WebSocket or event stream on the full (Pingora) path, ended cleanly when its upstream
/// drains. Pingora forwards the bytes; the edge cannot write into that connection itself, so it
/// ends the stream from the upstream's side: it shuts down its own copy of the
/// upstream socket, Pingora reads the end of the upstream's answer, and the body filter
/// ([`StreamCloser::filter`]) turns that end into a clean one — a close frame after the last
/// whole WebSocket frame; for an event stream, nothing after the end of the current event, and
/// the body's last chunk (written by the proxy's `fail_to_proxy` when the upstream's own
/// chunked body was cut short by the shutdown).
#[derive(Debug)]
pub struct StreamCloser {
    shared: Arc<Shared>,
    kind: Kind,
    /// Dropped with the request: the task that waits for the close time ends.
    _gone: tokio::sync::oneshot::Sender<()>,
}

#[derive(Debug)]
enum Kind {
    WebSocket(WsFrames),
    Events(EventEnds),
}

#[derive(Debug)]
struct Shared {
    /// A copy of the upstream socket (so that shutting it down can never reach another socket
    /// that took the number of a closed one).
    upstream: OwnedFd,
    /// The close time has come.
    due: AtomicBool,
    /// The event stream is between two events (a WebSocket: always ended at once).
    between: AtomicBool,
    /// The edge shut the upstream socket (both ways: the spinlet sees its connection end at once,
    /// so a SIGTERM handler that waits for its connections is not held by one Pingora has not
    /// closed yet): what ends now, the edge ended.
    ended: AtomicBool,
}

impl Shared {
    fn end(&self) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            let _ = rustix::net::shutdown(&self.upstream, rustix::net::Shutdown::Both);
        }
    }
}

impl StreamCloser {
    /// Watches `addr` of `app` (through `snapshot`) for its drain's close time, for a stream
    /// whose upstream socket is `fd` (still open: the request holds its connection). `None`
    /// when the socket cannot be copied (the stream then runs until the spinlet stops).
    pub fn start(
        snapshot: &Arc<Snapshot>,
        app: &Arc<str>,
        addr: SocketAddr,
        fd: RawFd,
        websocket: bool,
    ) -> Option<StreamCloser> {
        // The number was handed to `connected_to_upstream` for this request's connection, which
        // lives until the request ends: it names that socket now.
        #[allow(unsafe_code)]
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let upstream = rustix::io::dup(borrowed).ok()?;
        let shared = Arc::new(Shared {
            upstream,
            due: AtomicBool::new(false),
            between: AtomicBool::new(true),
            ended: AtomicBool::new(false),
        });
        let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
        let (snapshot, app, task_shared) = (snapshot.clone(), app.clone(), shared.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = close_time(&snapshot, &app, addr) => {}
                _ = &mut gone => return,
            }
            task_shared.due.store(true, Ordering::Release);
            if websocket || task_shared.between.load(Ordering::Acquire) {
                return task_shared.end();
            }
            // The body filter ends it at the end of the current event; this, if none comes.
            tokio::select! {
                () = tokio::time::sleep(EVENT_END_GRACE) => task_shared.end(),
                _ = gone => {}
            }
        });
        Some(StreamCloser {
            shared,
            kind: if websocket {
                Kind::WebSocket(WsFrames::default())
            } else {
                Kind::Events(EventEnds::default())
            },
            _gone: gone_tx,
        })
    }

    /// The edge ended this stream at its drain's close time.
    pub fn ended(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire)
    }

    /// The response body filter's part: follows the stream, and once it is being ended, keeps
    /// only what ends it cleanly.
    pub fn filter(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        let ended = self.ended();
        match &mut self.kind {
            Kind::WebSocket(frames) => {
                if let Some(b) = body.as_ref() {
                    frames.feed(b);
                }
                if end_of_stream && ended && frames.between() {
                    let mut out = BytesMut::from(body.take().unwrap_or_default());
                    out.extend_from_slice(WS_GOING_AWAY);
                    *body = Some(out.freeze());
                }
            }
            Kind::Events(events) => {
                if ended {
                    *body = None; // ended at an event end: nothing more
                } else if self.shared.due.load(Ordering::Acquire) {
                    match body.take() {
                        Some(b) => match events.until_between(&b) {
                            Some(n) => {
                                *body = Some(b.slice(..n));
                                self.shared.end();
                            }
                            None => *body = Some(b),
                        },
                        None if events.between() => self.shared.end(),
                        None => {}
                    }
                } else if let Some(b) = body.as_ref() {
                    events.feed(b);
                    self.shared
                        .between
                        .store(events.between(), Ordering::Release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_blank_lines_whatever_the_line_ends() {
        for stream in [
            &b"id: 1\ndata: a\n\n"[..],
            b"data: a\r\n\r\n",
            b"data: a\r\rdata",
            b": keep-alive\n",
            b"event: x\ndata: a\ndata: b\n\n",
        ] {
            let mut e = EventEnds::default();
            // Between events at the start; once something is sent, at the end of it.
            e.feed(&stream[..1]);
            let end = 1 + e.until_between(&stream[1..]).expect("an event end");
            assert!(e.between());
            let expect = match stream {
                b"data: a\r\rdata" => 9,
                _ => stream.len(),
            };
            assert_eq!(end, expect, "{:?}", String::from_utf8_lossy(stream));
        }
        let mut e = EventEnds::default();
        assert_eq!(e.until_between(b""), Some(0), "nothing sent: between");
        e.feed(b"data: a\n");
        assert!(!e.between());
        assert_eq!(e.until_between(b"data: b"), None);
        assert_eq!(e.until_between(b"\n\ndata: c\n\n"), Some(2));
        e.feed(b"data");
        assert!(!e.between());
    }

    #[test]
    fn websocket_frames_are_followed_across_reads() {
        let mut f = WsFrames::default();
        assert!(f.between());
        // A 5-byte text frame, then a 300-byte one (16-bit length), fed in pieces.
        let mut bytes = vec![0x81, 5, b'h', b'e', b'l', b'l', b'o'];
        bytes.extend([0x82, 126, 0x01, 0x2c]);
        bytes.extend(std::iter::repeat_n(7u8, 300));
        for piece in bytes.chunks(3) {
            f.feed(piece);
        }
        assert!(f.between());
        f.feed(&[0x81, 127, 0, 0, 0, 0, 0, 1]);
        assert!(!f.between());
        f.feed(&[0, 0]);
        assert!(!f.between(), "65536 payload bytes to come");
        f.feed(&vec![0u8; 65536]);
        assert!(f.between());
        // A masked one (a client would send these; followed all the same).
        f.feed(&[0x81, 0x82, 1, 2, 3, 4, 9, 9]);
        assert!(f.between());
        let mut close = WsFrames::default();
        close.feed(WS_GOING_AWAY);
        assert!(close.between(), "the close frame is one whole frame");
    }
}
