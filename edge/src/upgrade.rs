//! Zero-downtime binary upgrade: the running edge hands its listening sockets to its successor
//! over a Unix socket (SCM_RIGHTS, Pingora's `Fds` protocol), then stops accepting and drains.
//! The sockets never close, so no connection attempt is refused while the binary changes.
//!
//! Order, as with Pingora: start the new process with `--upgrade` (it waits for the sockets on
//! `edge.upgrade_sock`), then send SIGQUIT to the old one (it sends them and drains).

use pingora_core::server::Fds;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "no edge handed over its sockets on {path} (waited about 6 s); send SIGQUIT to the running edge right after starting this one, or start without --upgrade"
    )]
    NothingReceived { path: PathBuf },
    #[error(
        "the sockets handed over on {path} do not include {addr}; is the old edge's listen address the same?"
    )]
    Missing { path: PathBuf, addr: SocketAddr },
    #[error("cannot hand the listening sockets over on {path}: {reason}")]
    Send { path: PathBuf, reason: String },
    #[error("the upgrade socket path {0} is not valid UTF-8")]
    Path(PathBuf),
}

/// Listening sockets received from the edge being replaced, by address.
pub struct InheritedListeners {
    fds: Fds,
    path: PathBuf,
    /// Addresses handed out by [`InheritedListeners::take`]; the others are closed on drop (an
    /// address the new config no longer has must not stay listening with nobody accepting).
    taken: Vec<String>,
}

impl std::fmt::Debug for InheritedListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InheritedListeners")
            .field("path", &self.path)
            .field("addrs", &self.fds.serialize().0)
            .finish()
    }
}

/// Waits (blocking, about 6 s at most) for the running edge to send its listening sockets.
pub fn receive(path: &Path) -> Result<InheritedListeners, UpgradeError> {
    let text = path
        .to_str()
        .ok_or_else(|| UpgradeError::Path(path.to_path_buf()))?;
    let _ = std::fs::remove_file(path); // a stale socket file from an earlier run
    let mut fds = Fds::new();
    fds.get_from_sock(text)
        .map_err(|_| UpgradeError::NothingReceived {
            path: path.to_path_buf(),
        })?;
    let _ = std::fs::remove_file(path);
    Ok(InheritedListeners {
        fds,
        path: path.to_path_buf(),
        taken: Vec::new(),
    })
}

impl InheritedListeners {
    /// The listener bound to `addr`, taken over.
    pub fn take(&mut self, addr: SocketAddr) -> Result<TcpListener, UpgradeError> {
        let key = addr.to_string();
        if self.taken.contains(&key) {
            return Err(UpgradeError::Missing {
                path: self.path.clone(),
                addr,
            });
        }
        let fd = *self.fds.get(&key).ok_or_else(|| UpgradeError::Missing {
            path: self.path.clone(),
            addr,
        })?;
        self.taken.push(key);
        Ok(TcpListener::from(owned(fd)))
    }
}

impl Drop for InheritedListeners {
    fn drop(&mut self) {
        let (addrs, fds) = self.fds.serialize();
        for (addr, fd) in addrs.into_iter().zip(fds) {
            if !self.taken.contains(&addr) {
                tracing::info!(%addr, "closing a handed-over listener the config no longer has");
                drop(owned(fd));
            }
        }
    }
}

/// Takes ownership of a descriptor received through SCM_RIGHTS.
#[allow(unsafe_code)]
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process when it arrived with SCM_RIGHTS; nothing
    // else holds it, and `take` hands each address out once (Fds keeps only the number).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Copies of this edge's listening sockets, kept to hand over on SIGQUIT.
#[derive(Debug)]
pub struct Handoff {
    listeners: Vec<(String, TcpListener)>,
}

impl Handoff {
    pub fn new(listeners: Vec<(SocketAddr, TcpListener)>) -> Handoff {
        Handoff {
            listeners: listeners
                .into_iter()
                .map(|(a, l)| (a.to_string(), l))
                .collect(),
        }
    }

    /// Sends the sockets to a new edge waiting on `path` (blocking; retries for about 6 s).
    pub fn send(&self, path: &Path) -> Result<(), UpgradeError> {
        let text = path
            .to_str()
            .ok_or_else(|| UpgradeError::Path(path.to_path_buf()))?;
        let mut fds = Fds::new();
        for (addr, l) in &self.listeners {
            fds.add(addr.clone(), l.as_raw_fd());
        }
        fds.send_to_sock(text)
            .map(|_| ())
            .map_err(|e| UpgradeError::Send {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }
}
