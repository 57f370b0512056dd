//! The listeners, plain and HTTPS, for every proxy thread.
//!
//! Each proxy thread accepts from its own copy of every listening socket (one accept queue per
//! listener, shared by the threads). A connection is served by the thread that accepted it —
//! unless another thread has fewer connections by more than [`SLACK`]: then it is handed to that
//! one, as HAProxy's multi-queue listeners do. Without that, whichever thread wakes first takes
//! a burst of new connections (16 HTTP/2 clients connecting at once may all land on one), and
//! with keep-alive the imbalance lasts: one core works while the other idles, which halves the
//! throughput of CPU-heavy traffic (TLS, compression). After the handover a connection stays on
//! its thread to the end — its runtime, its upstream pool — so no request wakes another thread.
//!
//! Every connection is admitted against the per-IP count (`edge.max_connections_per_ip`; one
//! table for plain and HTTPS), must send its first byte within `edge.header_timeout`, and an
//! HTTPS one must complete its handshake within [`HANDSHAKE_TIMEOUT`]; then the thread's app
//! (the fast path, Pingora behind it) serves it. A plain connection that idles between
//! requests is parked (see [`crate::park`]) and comes back to a new task when its client sends.

use crate::limits::{Admission, ConnectionCounts, ConnectionSlot, client_key};
use crate::park::{self, Parked};
use async_trait::async_trait;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora_core::server::ShutdownWatch;
use spinforge_state::stop::CancellationToken;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// A connection is handed to another thread only when that one has this many fewer open.
const SLACK: usize = 1;
/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to keep idle connections after the listeners closed (set when the stop begins).
#[derive(Debug, Default)]
pub struct Linger(AtomicU64);

impl Linger {
    pub fn set(&self, d: Duration) {
        self.0.store(d.as_millis() as u64, Ordering::Relaxed);
    }
    fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// What guards every listener against abusive clients: the per-IP count against
/// `edge.max_connections_per_ip`, and `edge.header_timeout` for a new connection's first byte
/// (no request, no ClientHello: closed). Both limits are read from the live settings when a
/// connection is accepted, so a reload applies to the next connection.
#[derive(Debug, Clone)]
pub struct Guard {
    pub counts: Arc<ConnectionCounts>,
    pub settings: crate::proxy::LiveSettings,
}

/// One listening socket's copy for one thread.
pub struct Listener {
    pub socket: std::net::TcpListener,
    /// HTTPS: its handshakes. `None`: plain HTTP.
    pub tls: Option<Arc<Acceptor>>,
}

/// A connection accepted by one thread for another.
struct Handed {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<Acceptor>>,
}

/// The threads' open connections and their inboxes, shared by all of them.
pub struct Threads {
    open: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// One thread's end of [`Threads`].
pub struct Inbox {
    index: usize,
    rx: mpsc::UnboundedReceiver<Handed>,
}

impl Threads {
    /// `n` threads, and each one's inbox.
    pub fn new(n: usize) -> (Arc<Threads>, Vec<Inbox>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let threads = Arc::new(Threads {
            open: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: txs.into(),
        });
        let inboxes = rxs
            .into_iter()
            .enumerate()
            .map(|(index, rx)| Inbox { index, rx })
            .collect();
        (threads, inboxes)
    }

    /// The thread that should serve a connection `me` accepted: `me`, unless another has
    /// fewer open by more than [`SLACK`].
    fn pick(&self, me: usize) -> usize {
        let mine = self.open[me].load(Ordering::Relaxed);
        let (least, count) = self
            .open
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.load(Ordering::Relaxed)))
            .min_by_key(|(_, n)| *n)
            .unwrap_or((me, mine));
        if mine > count + SLACK { least } else { me }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("socket", &self.socket)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads").field("open", &self.open).finish()
    }
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("index", &self.index).finish()
    }
}

/// Counts a connection as open on its thread until dropped.
struct Open<'a>(&'a AtomicUsize);

impl<'a> Open<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What serves the connections a proxy thread accepts.
#[async_trait]
pub trait App: Send + Sync + 'static {
    /// Serves `stream` until it closes; or, a plain connection, until it idles with nothing
    /// read: then its socket comes back, to be parked.
    async fn serve(self: &Arc<Self>, stream: Stream, stop: &ShutdownWatch) -> Option<park::Idle>;

    /// Closes what is idle; called once the listeners are closed (and the linger is over).
    async fn cleanup(&self);
}

/// Everything one proxy thread serves with.
pub struct ThreadServer<A> {
    pub app: Arc<A>,
    pub guard: Guard,
    pub threads: Arc<Threads>,
    pub linger: Arc<Linger>,
    /// Where this thread's idle plain connections go; its [`park::Inbox`] is given to [`run`].
    ///
    /// [`run`]: ThreadServer::run
    pub park: park::Entrance,
}

impl<A> std::fmt::Debug for ThreadServer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadServer").finish_non_exhaustive()
    }
}

impl<A: App> ThreadServer<A> {
    /// Accepts on `listeners` until `stop` turns true, serves what this thread accepted or was
    /// handed, then lingers, lets the app close its idle connections, closes the parked ones,
    /// and returns. Connections still in flight go on until the runtime is dropped.
    pub async fn run(
        self,
        listeners: Vec<Listener>,
        inbox: Inbox,
        parked: park::Inbox,
        stop: ShutdownWatch,
    ) {
        let me = inbox.index;
        let this = Arc::new(self);
        let close_parked = CancellationToken::new();
        let park = {
            let (this, stop) = (this.clone(), stop.clone());
            tokio::spawn(park::keep(parked, close_parked.clone(), move |p| {
                this.resume(me, p, &stop)
            }))
        };
        let mut accepts = Vec::new();
        for l in listeners {
            let socket = match tokio::net::TcpListener::from_std(l.socket) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot use a listening socket");
                    continue;
                }
            };
            accepts.push(tokio::spawn(this.clone().accept(
                me,
                socket,
                l.tls,
                stop.clone(),
            )));
        }
        let handed = tokio::spawn(this.clone().take_handed(inbox, stop.clone()));
        for a in accepts {
            let _ = a.await;
        }
        handed.abort();
        // Idle keep-alive connections close in the app's cleanup; lingering first lets their
        // next request through (answered with `Connection: close`), for a successor's sake.
        let linger = this.linger.get();
        if !linger.is_zero() {
            tokio::time::sleep(linger).await;
        }
        this.app.cleanup().await;
        close_parked.cancel();
        let _ = park.await;
    }

    async fn accept(
        self: Arc<Self>,
        me: usize,
        socket: tokio::net::TcpListener,
        tls: Option<Arc<Acceptor>>,
        mut stop: ShutdownWatch,
    ) {
        loop {
            let accepted = tokio::select! {
                a = socket.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors: give others a moment to close some.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let to = self.threads.pick(me);
            if to != me {
                let handed = tcp.into_std().map(|tcp| Handed {
                    tcp,
                    peer,
                    tls: tls.clone(),
                });
                match handed {
                    Ok(h) => match self.threads.inboxes[to].send(h) {
                        Ok(()) => continue,
                        // That thread is gone (stopping): serve it here.
                        Err(mpsc::error::SendError(h)) => {
                            if let Ok(tcp) = tokio::net::TcpStream::from_std(h.tcp) {
                                self.spawn(me, tcp, peer, h.tls, &stop);
                            }
                        }
                    },
                    Err(e) => tracing::debug!(error = %e, "cannot hand a connection over"),
                }
                continue;
            }
            self.spawn(me, tcp, peer, tls.clone(), &stop);
        }
    }

    async fn take_handed(self: Arc<Self>, mut inbox: Inbox, stop: ShutdownWatch) {
        while let Some(h) = inbox.rx.recv().await {
            match tokio::net::TcpStream::from_std(h.tcp) {
                Ok(tcp) => self.spawn(inbox.index, tcp, h.peer, h.tls, &stop),
                Err(e) => tracing::debug!(error = %e, "cannot take a connection over"),
            }
        }
    }

    fn spawn(
        self: &Arc<Self>,
        me: usize,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        tls: Option<Arc<Acceptor>>,
        stop: &ShutdownWatch,
    ) {
        let (this, stop) = (self.clone(), stop.clone());
        tokio::spawn(async move {
            let _open = Open::start(&this.threads.open[me]);
            this.serve(tcp, peer, tls, stop).await;
        });
    }

    async fn serve(
        &self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        tls: Option<Arc<Acceptor>>,
        stop: ShutdownWatch,
    ) {
        // Counted while the connection is open — for HTTP/1 keep-alive that is also the wait for
        // its next request — as NGINX's limit_conn does; before any byte is read (HTTPS: before
        // the handshake, so refused connections cost no crypto).
        let guard = &self.guard;
        let (max_per_ip, first_byte_timeout) = {
            let s = guard.settings.load();
            (s.max_connections_per_ip, s.header_timeout)
        };
        let slot = match guard.counts.admit(client_key(peer.ip()), max_per_ip) {
            Admission::Refused => {
                tracing::debug!(%peer, "too many connections from one address; closing");
                return;
            }
            admitted => admitted,
        };
        let mut first = [0u8; 1];
        match tokio::time::timeout(first_byte_timeout, tcp.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return, // closed (or failed) before sending anything
            Err(_) => {
                tracing::debug!(%peer, "nothing sent within the header timeout; closing");
                return;
            }
        }
        let stream: Stream = match tls {
            None => Box::new(l4_stream(tcp, peer)),
            // Boxed: the handshake's future is ~8 KB; inline, it would size every connection's
            // task, idle keep-alive ones included, for the connection's whole life.
            Some(acceptor) => {
                let l4 = l4_stream(tcp, peer);
                match Box::pin(crate::tls::listener::handshake(&acceptor, l4, peer)).await {
                    Some(tls) => tls,
                    None => return,
                }
            }
        };
        let slot = match slot {
            Admission::Counted(slot) => Some(slot),
            _ => None,
        };
        self.serve_stream(stream, slot, stop).await;
    }

    /// Serves `stream` with the app, and parks it whenever it idles (while the park has room;
    /// else it goes on waiting in this task).
    async fn serve_stream(
        &self,
        mut stream: Stream,
        mut slot: Option<ConnectionSlot>,
        stop: ShutdownWatch,
    ) {
        loop {
            let Some(idle) = self.app.serve(stream, &stop).await else {
                return;
            };
            match self.park.park(Parked { idle, slot }) {
                Ok(()) => return,
                Err(back) => {
                    slot = back.slot;
                    match unparked(back.idle) {
                        Some(s) => stream = s,
                        None => return,
                    }
                }
            }
        }
    }

    /// A parked connection's client sent (or closed): a new task serves it.
    fn resume(self: &Arc<Self>, me: usize, parked: Parked, stop: &ShutdownWatch) {
        let (this, stop) = (self.clone(), stop.clone());
        tokio::spawn(async move {
            let _open = Open::start(&this.threads.open[me]);
            let Parked { idle, slot } = parked;
            if let Some(stream) = unparked(idle) {
                this.serve_stream(stream, slot, stop).await;
            }
        });
    }
}

/// Pingora's stream again over a parked connection's socket (`None`: it is gone). Its place in
/// the open-connections gauge is given up: the app counts it again.
fn unparked(idle: park::Idle) -> Option<Stream> {
    let park::Idle { socket, open, .. } = idle;
    drop(open);
    let tcp = tokio::net::TcpStream::from_std(socket).ok()?;
    let peer = tcp.peer_addr().ok()?;
    Some(Box::new(l4_stream(tcp, peer)))
}

/// Pingora's stream over an accepted connection, with its socket digest. Not inline in
/// [`ThreadServer::serve`]: the stream and digest (~770 bytes) would keep their slots in that
/// future's state after being moved out, in every connection's task for its whole life.
fn l4_stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> L4Stream {
    let _ = tcp.set_nodelay(true);
    let mut l4: L4Stream = tcp.into();
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    l4.set_socket_digest(digest);
    l4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_a_thread_with_fewer_open_only_past_the_slack() {
        let (threads, _inboxes) = Threads::new(3);
        assert_eq!(threads.pick(0), 0, "all equal: keep it");
        threads.open[0].store(1, Ordering::Relaxed);
        assert_eq!(threads.pick(0), 0, "within the slack");
        threads.open[0].store(5, Ordering::Relaxed);
        threads.open[1].store(4, Ordering::Relaxed);
        threads.open[2].store(2, Ordering::Relaxed);
        assert_eq!(threads.pick(0), 2, "the least loaded");
        assert_eq!(threads.pick(2), 2);
    }
}
