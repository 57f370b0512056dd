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
struct Idle {
    by_upstream: HashMap<SocketAddr, Vec<(TcpStream, Instant)>>,
    count: usize,
    returns: u32,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// The most recently used idle connection to `addr` that is younger than
/// [`crate::proxy::UPSTREAM_IDLE`]; older ones are closed on the way.
pub fn take(addr: SocketAddr) -> Option<TcpStream> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.by_upstream.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((conn, since)) = list.pop() {
            idle.count -= 1;
            if now.duration_since(since) < crate::proxy::UPSTREAM_IDLE {
                return Some(conn);
            }
        }
        None
    })
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

fn sweep(idle: &mut Idle) {
    let now = Instant::now();
    let mut count = 0;
    idle.by_upstream.retain(|_, list| {
        list.retain(|(_, since)| now.duration_since(*since) < crate::proxy::UPSTREAM_IDLE);
        count += list.len();
        !list.is_empty()
    });
    idle.count = count;
}
