//! Idle upstream connections, one pool per proxy thread: each thread runs its own
//! single-threaded runtime, so its connections are registered with its own reactor and the pool
//! needs no lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::TcpStream;

/// Idle connections one thread keeps, over all upstreams.
const MAX_IDLE: usize = 512;
/// Every this many returns, connections idle too long are closed on every upstream (those of
/// an app that stopped would otherwise linger until its port is used again).
const SWEEP_EVERY: u32 = 1024;

#[derive(Default)]
struct Lists {
    by_upstream: HashMap<SocketAddr, Vec<(TcpStream, Instant)>>,
    count: usize,
    returns: u32,
}

thread_local! {
    static IDLE: RefCell<Lists> = RefCell::new(Lists::default());
}

/// What an idle connection held when it was taken from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Nothing to read and still open: it can carry a request.
    Clean,
    /// The upstream closed it (or it broke).
    Closed,
    /// Bytes arrived that no request asked for: a stray answer, never to be passed on.
    Stray,
}

/// The most recently used idle connection to `addr` that is younger than
/// [`crate::proxy::UPSTREAM_IDLE`] (older ones are closed on the way), with what it holds.
pub fn take(addr: SocketAddr) -> Option<(TcpStream, Idle)> {
    let conn = IDLE.with_borrow_mut(|idle| {
        let list = idle.by_upstream.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((conn, since)) = list.pop() {
            idle.count -= 1;
            if now.duration_since(since) < crate::proxy::UPSTREAM_IDLE {
                return Some(conn);
            }
        }
        None
    })?;
    let state = inspect(&conn);
    Some((conn, state))
}

/// One non-blocking peek at the socket itself (a system call, not the runtime's cached
/// readiness, which may not have seen bytes that just arrived).
fn inspect(conn: &TcpStream) -> Idle {
    use rustix::net::{RecvFlags, recv};
    let mut byte = [0u8; 1];
    match recv(conn, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Err(e) if e == rustix::io::Errno::AGAIN => Idle::Clean,
        Ok((0, _)) | Err(_) => Idle::Closed,
        Ok(_) => Idle::Stray,
    }
}

/// Keeps `conn` for the next request to `addr` (or closes it when the pool is full).
pub fn put(addr: SocketAddr, conn: TcpStream) {
    IDLE.with_borrow_mut(|idle| {
        idle.returns = idle.returns.wrapping_add(1);
        if idle.returns % SWEEP_EVERY == 0 {
            sweep(idle);
        }
        if idle.count >= MAX_IDLE {
            return;
        }
        idle.by_upstream
            .entry(addr)
            .or_default()
            .push((conn, Instant::now()));
        idle.count += 1;
    });
}

/// Closes every idle connection to `addr`: one was found closed by the upstream, and the others
/// most likely were too (the process exited or restarted).
pub fn forget(addr: SocketAddr) {
    IDLE.with_borrow_mut(|idle| {
        if let Some(list) = idle.by_upstream.remove(&addr) {
            idle.count -= list.len();
        }
    });
}

fn sweep(idle: &mut Lists) {
    let now = Instant::now();
    let mut count = 0;
    idle.by_upstream.retain(|_, list| {
        list.retain(|(_, since)| now.duration_since(*since) < crate::proxy::UPSTREAM_IDLE);
        count += list.len();
        !list.is_empty()
    });
    idle.count = count;
}
