//! One request's exchange with an upstream, up to the answer's head, for either front end
//! (HTTP/1.1 connections, HTTP/2 streams): which upstream, a pooled or new connection, the
//! request sent, interim answers passed on, the final head read — and, when that fails, the
//! request sent again where the policy says it is safe ([`crate::policy::retry_after`]).

use super::head::{self, ResponseHead};
use super::{Failed, RESPONSE_HEAD_MAX, SMALL_BUF, pool};
use crate::balance::UpstreamLoad;
use crate::policy::{Retry, retry_after};
use crate::proxy::choose_upstream;
use crate::routing::AppEntry;
use spinforge_state::now_ms;
use std::future::Future;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a front end does around the exchange.
pub(super) trait Front: Send {
    /// The request as it goes out first: its head, and the body bytes already at hand.
    fn request(&self) -> &[u8];
    /// Sends the rest of the request body (after [`Front::request`]).
    fn send_body(&mut self, up: &mut TcpStream) -> impl Future<Output = Result<(), Failed>> + Send;
    /// The buffer the answer is read into (its head first).
    fn answer_buf(&mut self) -> &mut Vec<u8>;
    /// Reads the answer head at the start of [`Front::answer_buf`], writing the client's.
    fn read_head(&mut self) -> Result<Option<ResponseHead>, head::Malformed>;
    /// Passes on the interim answer [`Front::read_head`] just read (`len` bytes, then dropped
    /// from the buffer).
    fn interim(&mut self, len: usize) -> impl Future<Output = Result<(), Failed>> + Send;
}

/// An upstream connection with an answer head read from it.
pub(super) struct Answered {
    pub up: TcpStream,
    pub addr: SocketAddr,
    /// Counts the request against its upstream's load while it lives.
    pub _load: UpstreamLoad,
    pub head: ResponseHead,
}

/// Sends the request to one of `app`'s upstreams and reads the answer's head.
pub(super) async fn exchange_head<F: Front>(
    app: &AppEntry,
    replayable: bool,
    front: &mut F,
) -> Result<Answered, Failed> {
    let n = app.upstreams.len();
    let first = app.runtime.next_upstream();
    let mut attempt = 0;
    let mut replays_left = 1u8;
    let mut fresh_only = false;
    'attempts: loop {
        let addr = choose_upstream(app, first, attempt);
        // Counted from the pick on, before any wait: a drain never misses a request that chose
        // its spinlet just before the routing table changed.
        let load = app.runtime.loads.start(addr);
        let pooled = if fresh_only { None } else { pool::take(addr) };
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some((up, pool::Idle::Clean)) => up,
            Some((_, pool::Idle::Closed)) => {
                // Closed while idle: so probably are the others; the next try connects anew.
                pool::forget(addr);
                fresh_only = true;
                continue;
            }
            Some((_, pool::Idle::Stray)) => {
                // Bytes nobody asked for: not an answer to give anyone. Dropped.
                tracing::debug!(upstream = %addr, "an idle upstream connection had stray bytes; closed");
                continue;
            }
            None => match connect(addr).await {
                Ok(up) => up,
                Err(e) => {
                    tracing::debug!(upstream = %addr, error = %e, "connect to a spinlet failed");
                    app.runtime.metrics().connect_failure();
                    if app.runtime.breakers.failure(addr, now_ms()) {
                        tracing::warn!(app = %app.name, upstream = %addr, "upstream failing; skipping it for a while");
                    }
                    attempt += 1;
                    fresh_only = false;
                    if attempt < n {
                        continue; // nothing was sent: any method may try the next one
                    }
                    return Err(Failed::BeforeResponse);
                }
            },
        };
        // Failed before any answer: try again where that is safe (see `retry_after`).
        macro_rules! failed_before_answer {
            () => {
                match retry_after(reused, replayable, &mut replays_left, attempt, n) {
                    Retry::Fresh => {
                        pool::forget(addr);
                        fresh_only = true;
                        continue 'attempts;
                    }
                    Retry::Next => {
                        app.runtime.breakers.failure(addr, now_ms());
                        attempt += 1;
                        fresh_only = false;
                        continue 'attempts;
                    }
                    Retry::No => {
                        if reused {
                            pool::forget(addr);
                        }
                        app.runtime.breakers.failure(addr, now_ms());
                        return Err(Failed::BeforeResponse);
                    }
                }
            };
        }
        if up.write_all(front.request()).await.is_err() {
            failed_before_answer!();
        }
        front.send_body(&mut up).await?;
        // Interim (1xx) answers pass on as they come; then the final head.
        front.answer_buf().clear();
        let mut interim_sent = false;
        loop {
            if !front.answer_buf().is_empty() {
                match front.read_head() {
                    Ok(Some(h)) if h.interim => {
                        front.interim(h.len).await?;
                        interim_sent = true;
                        continue;
                    }
                    Ok(Some(head)) => {
                        app.runtime.answered(addr, Some(&load));
                        return Ok(Answered {
                            up,
                            addr,
                            _load: load,
                            head,
                        });
                    }
                    Ok(None) if front.answer_buf().len() < RESPONSE_HEAD_MAX => {}
                    Ok(None) | Err(head::Malformed) => {
                        tracing::debug!(upstream = %addr, "unreadable response head");
                        return Err(Failed::BeforeResponse);
                    }
                }
            }
            let buf = front.answer_buf();
            buf.reserve(SMALL_BUF);
            match up.read_buf(buf).await {
                Ok(0) | Err(_) if front.answer_buf().is_empty() && !interim_sent => {
                    failed_before_answer!();
                }
                Ok(0) | Err(_) => {
                    app.runtime.breakers.failure(addr, now_ms());
                    return Err(if interim_sent {
                        Failed::Midway
                    } else {
                        Failed::BeforeResponse
                    });
                }
                Ok(_) => {}
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let up = tokio::time::timeout(crate::proxy::CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    up.set_nodelay(true)?;
    Ok(up)
}
