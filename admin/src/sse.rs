//! Server-Sent Events: a build's log (from the store), and an app's log file (tail, then follow).
//!
//! Each stream is a task feeding a small bounded channel: it ends when the client goes (a send
//! fails or stays blocked past [`SEND_DEADLINE`]), when the build ends, or at shutdown. At most
//! `MAX_STREAMS` are open at once.

use crate::Ctx;
use crate::problem::Problem;
use crate::router::{Query, Resp, app_name};
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::json;
use spinforge_state::stop::CancellationToken;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

const POLL: Duration = Duration::from_millis(250);
const KEEPALIVE: Duration = Duration::from_secs(15);
/// A client that takes no data for this long is gone.
const SEND_DEADLINE: Duration = Duration::from_secs(60);
/// Log lines read from the store per batch.
const BATCH: usize = 500;
/// `lines=` for an app log: default and most.
const TAIL_DEFAULT: usize = 100;
const TAIL_MAX: usize = 10_000;
/// Bytes read from a log file at once while following.
const READ_CHUNK: usize = 64 << 10;

/// One event on the wire, the only place frames are built: every line of `data` becomes a
/// `data:` line. Lines end at CRLF, LF or a lone CR, as an EventSource reads them, so text from a
/// log cannot start a field of its own (`event: end`) or end the event early. `id` and `name`
/// are ours; a line end in them is dropped all the same.
pub(crate) fn event(id: Option<&str>, name: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    for (field, value) in [("event", name), ("id", id)] {
        if let Some(value) = value {
            out.push_str(field);
            out.push_str(": ");
            out.extend(value.chars().filter(|c| !matches!(c, '\r' | '\n')));
            out.push('\n');
        }
    }
    // A CRLF-terminated line read up to its LF keeps no empty line for the CR.
    for line in data_lines(data.trim_end_matches('\r')) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// `text` split at every line end an EventSource knows: CRLF, LF and a lone CR.
fn data_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match t.find(['\r', '\n']) {
            Some(i) => {
                let next = if t[i..].starts_with("\r\n") {
                    i + 2
                } else {
                    i + 1
                };
                rest = Some(&t[next..]);
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

/// The sending half of a stream; `send` is false once the client is gone.
pub(crate) struct Sink {
    tx: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
}

impl Sink {
    /// Resolves once the client is gone.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await
    }

    /// Cancelled when the API is stopping.
    pub(crate) fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub(crate) async fn send(&self, b: Bytes) -> bool {
        matches!(
            tokio::time::timeout(SEND_DEADLINE, self.tx.send(b)).await,
            Ok(Ok(()))
        )
    }

    /// Waits one poll interval; false when the client left or the API is stopping.
    async fn pause(&mut self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => !self.tx.is_closed(),
            _ = self.tx.closed() => false,
            _ = self.shutdown.cancelled() => false,
        }
    }
}

/// A response whose body is what the returned sink sends (one of the `MAX_STREAMS`).
pub(crate) fn stream(ctx: &Ctx) -> Result<(Resp, Sink, OwnedSemaphorePermit), Problem> {
    let permit = ctx.streams.clone().try_acquire_owned().map_err(|_| {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many log streams are open; try again later",
        )
        .with_header(header::RETRY_AFTER, "5")
    })?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let body = http_body_util::StreamBody::new(body).boxed_unsync();
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("static headers are valid");
    Ok((
        resp,
        Sink {
            tx,
            shutdown: ctx.shutdown.clone(),
        },
        permit,
    ))
}

pub(crate) async fn build_log(ctx: &Arc<Ctx>, id: &str, q: &Query) -> Result<Resp, Problem> {
    crate::reads::build_id(id)?;
    if ctx.store.build(id).await?.is_none() {
        return Err(Problem::not_found(format!("there is no build `{id}`")));
    }
    let (resp, mut sink, permit) = stream(ctx)?;
    let (store, id, follow) = (ctx.store.clone(), id.to_string(), q.follow);
    tokio::spawn(async move {
        let _permit = permit;
        let mut after: Option<String> = None;
        let mut idle = Duration::ZERO;
        loop {
            // Read whether it has finished before reading the log: a build that finished in
            // between has all its lines in by then, and the next round sends them.
            let status = store.build(&id).await.ok().flatten();
            let entries = match store.build_log(&id, after.as_deref(), BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(build = %id, "build log stream: {e}");
                    break;
                }
            };
            let full = entries.len() == BATCH;
            for e in entries {
                if !sink.send(event(Some(&e.id), None, &e.line)).await {
                    return;
                }
                after = Some(e.id);
                idle = Duration::ZERO;
            }
            if full {
                continue;
            }
            let finished = status.as_ref().is_none_or(|s| s.state.is_final());
            if !follow || finished {
                let end = status
                    .as_ref()
                    .map(crate::reads::build_view)
                    .unwrap_or(json!({ "id": id, "state": "unknown" }));
                let _ = sink.send(event(None, Some("end"), &end.to_string())).await;
                return;
            }
            if !sink.pause().await {
                return;
            }
            idle += POLL;
            if idle >= KEEPALIVE {
                idle = Duration::ZERO;
                if !sink.send(Bytes::from_static(b": keep-alive\n\n")).await {
                    return;
                }
            }
        }
    });
    Ok(resp)
}

pub(crate) async fn app_log(ctx: &Arc<Ctx>, app: &str, q: &Query) -> Result<Resp, Problem> {
    app_name(app)?;
    let lines = match &q.lines {
        None => TAIL_DEFAULT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= TAIL_MAX)
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "`lines={v}`: give a number of lines from 0 to {TAIL_MAX}"
                ))
            })?,
    };
    ctx.handle.app(app).await?;
    let path = ctx.data_dir.join("logs").join(format!("{app}.log"));
    let (resp, mut sink, permit) = stream(ctx)?;
    let follow = q.follow;
    tokio::spawn(async move {
        let _permit = permit;
        let (tail, mut pos) = match tokio::task::spawn_blocking({
            let path = path.clone();
            move || read_tail(&path, lines)
        })
        .await
        {
            Ok(t) => t,
            Err(_) => return,
        };
        for line in tail {
            if !sink.send(event(None, None, &line)).await {
                return;
            }
        }
        if !follow {
            let _ = sink.send(event(None, Some("end"), "{}")).await;
            return;
        }
        let mut pending = Vec::new();
        let mut idle = Duration::ZERO;
        loop {
            if !sink.pause().await {
                return;
            }
            let (chunk, next) = match tokio::task::spawn_blocking({
                let path = path.clone();
                move || read_more(&path, pos)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            if next.restarted {
                pending.clear();
            }
            pos = next;
            pending.extend_from_slice(&chunk);
            let mut sent_any = false;
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if !sink.send(event(None, None, &text)).await {
                    return;
                }
                sent_any = true;
            }
            // A line longer than a chunk is sent in pieces rather than held without bound.
            if pending.len() > READ_CHUNK {
                let text = String::from_utf8_lossy(&pending).into_owned();
                pending.clear();
                if !sink.send(event(None, None, &text)).await {
                    return;
                }
                sent_any = true;
            }
            idle = if sent_any {
                Duration::ZERO
            } else {
                idle + POLL
            };
            if idle >= KEEPALIVE {
                idle = Duration::ZERO;
                if !sink.send(Bytes::from_static(b": keep-alive\n\n")).await {
                    return;
                }
            }
        }
    });
    Ok(resp)
}

/// Where a follower is in a log file: the file (by inode) and the offset read up to.
#[derive(Debug, Clone, Copy, Default)]
struct Pos {
    ino: u64,
    offset: u64,
    /// This read started the file again (it was rotated or truncated).
    restarted: bool,
}

/// The last `n` lines of the file (lossy UTF-8), and where they end.
fn read_tail(path: &PathBuf, n: usize) -> (Vec<String>, Pos) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), Pos::default());
    };
    let Ok(meta) = f.metadata() else {
        return (Vec::new(), Pos::default());
    };
    let len = meta.len();
    // Lines are rarely longer than 1 KiB; never read more than 8 MiB for a tail.
    let want = ((n as u64) * 1024).clamp(64 << 10, 8 << 20).min(len);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(len - want)).is_err() || f.take(want).read_to_end(&mut buf).is_err() {
        return (Vec::new(), Pos::default());
    }
    // Only whole lines: what follows the last newline is sent once complete.
    let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines: Vec<&str> = text.lines().collect();
    if want < len && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    let out = lines[skip..].iter().map(|s| s.to_string()).collect();
    (
        out,
        Pos {
            ino: meta.ino(),
            offset: len - want + end as u64,
            restarted: false,
        },
    )
}

/// Up to [`READ_CHUNK`] new bytes after `pos`; starts over when the file was replaced or cut.
fn read_more(path: &PathBuf, pos: Pos) -> (Vec<u8>, Pos) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (
            Vec::new(),
            Pos {
                restarted: false,
                ..pos
            },
        );
    };
    let Ok(meta) = f.metadata() else {
        return (
            Vec::new(),
            Pos {
                restarted: false,
                ..pos
            },
        );
    };
    let restarted = meta.ino() != pos.ino || meta.len() < pos.offset;
    let offset = if restarted { 0 } else { pos.offset };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_err()
        || f.take(READ_CHUNK as u64).read_to_end(&mut buf).is_err()
    {
        return (
            Vec::new(),
            Pos {
                restarted: false,
                ..pos
            },
        );
    }
    let next = Pos {
        ino: meta.ino(),
        offset: offset + buf.len() as u64,
        restarted,
    };
    (buf, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap_or_default()
    }

    #[test]
    fn every_line_end_starts_a_new_data_line() {
        assert_eq!(
            wire(event(None, None, "before\revent: end\rdata: x")),
            "data: before\ndata: event: end\ndata: data: x\n\n"
        );
        assert_eq!(
            wire(event(None, None, "a\r\nb\nc\r\rd")),
            "data: a\ndata: b\ndata: c\ndata: \ndata: d\n\n"
        );
        assert_eq!(wire(event(None, None, "")), "data: \n\n");
        assert_eq!(wire(event(None, None, "x\r")), "data: x\n\n");
        assert_eq!(
            wire(event(Some("1-0\r\nevent: x"), Some("end"), "{}")),
            "event: end\nid: 1-0event: x\ndata: {}\n\n"
        );
        // What goes out has no CR at all, and every line is a field we wrote.
        let out = wire(event(Some("7"), None, "\r\revent: end\n\r\nid: 9\r"));
        assert!(!out.contains('\r'));
        assert!(
            out.lines()
                .all(|l| l.is_empty() || l.starts_with("data: ") || l == "id: 7"),
            "{out:?}"
        );
    }
}
