//! A tiny HTTP/1.1 server in the test process, standing for a service SpinForge does not run
//! (an `upstream:` app). `GET /healthz` answers 200 or 503 as the test says; any other path
//! answers 200 with `upstream <name> saw <path>`. Each request is counted.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Listens on 127.0.0.1 (ephemeral port), healthy.
    pub async fn start(name: &'static str) -> Upstream {
        Self::start_with(name, None).await
    }

    /// Like [`Upstream::start`], but closes a connection once it has been idle for
    /// `idle_close` (a server with a short keep-alive timeout).
    pub async fn start_closing_idle(name: &'static str, idle_close: Duration) -> Upstream {
        Self::start_with(name, Some(idle_close)).await
    }

    async fn start_with(name: &'static str, idle_close: Option<Duration>) -> Upstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the test upstream");
        let addr = listener.local_addr().expect("its address");
        let healthy = Arc::new(AtomicBool::new(true));
        let requests = Arc::new(AtomicUsize::new(0));
        let (h, r) = (healthy.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, name, h.clone(), r.clone(), idle_close));
            }
        });
        Upstream {
            addr,
            healthy,
            requests,
            task,
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests other than health checks.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers requests on one connection (keep-alive) until the client closes it.
async fn serve(
    mut stream: TcpStream,
    name: &'static str,
    healthy: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    idle_close: Option<Duration>,
) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk);
            let read = match idle_close.filter(|_| buf.is_empty()) {
                Some(idle) => match tokio::time::timeout(idle, read).await {
                    Ok(r) => r,
                    Err(_) => return, // idle too long: close
                },
                None => read.await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        // Skip a request body (Content-Length only).
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (status, body) = if path == "/healthz" {
            if healthy.load(Ordering::SeqCst) {
                ("200 OK", "ok\n".to_string())
            } else {
                ("503 Service Unavailable", "down\n".to_string())
            }
        } else {
            requests.fetch_add(1, Ordering::SeqCst);
            ("200 OK", format!("upstream {name} saw {path}\n"))
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
