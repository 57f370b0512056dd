//! A small HTTP/1.1 client over a raw TCP stream, for tests that must tell *how* a request
//! failed: refused, closed before any byte of an answer (on a fresh or a reused connection), cut
//! in the middle of one, or never answered. It reads answers framed by `Content-Length`,
//! `chunked` or the connection's end, and hands bodies out piece by piece (for event streams).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How an exchange went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broke {
    /// The connection could not be opened.
    Connect(String),
    /// The connection was closed or reset before any byte of the answer; `reused`: it had carried
    /// an answer before (a keep-alive connection).
    NoAnswer { reused: bool, detail: String },
    /// The answer stopped in its middle (head or body).
    Cut(String),
    /// Bytes that are not an HTTP/1.1 answer.
    Malformed(String),
}

impl std::fmt::Display for Broke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broke::Connect(e) => write!(f, "connect: {e}"),
            Broke::NoAnswer { reused, detail } => write!(
                f,
                "no answer on a {} connection: {detail}",
                if *reused { "reused" } else { "fresh" }
            ),
            Broke::Cut(e) => write!(f, "answer cut: {e}"),
            Broke::Malformed(e) => write!(f, "malformed answer: {e}"),
        }
    }
}

/// An answer's head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The server will close the connection after this answer.
    pub close: bool,
    framing: Framing,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Answers read whole on it so far.
    pub answered: u32,
    /// Where the body being read is.
    left: Framing,
    chunk: Chunk,
}

impl Conn {
    /// Connects (within 5 s).
    pub async fn open(addr: SocketAddr) -> Result<Conn, Broke> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| Broke::Connect("no connection within 5 s".into()))?
            .map_err(|e| Broke::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            answered: 0,
            left: Framing::None,
            chunk: Chunk::Size,
        })
    }

    /// Writes a request (head and body bytes as given).
    pub async fn send(&mut self, request: &[u8]) -> Result<(), Broke> {
        let reused = self.answered > 0;
        self.stream
            .write_all(request)
            .await
            .map_err(|e| Broke::NoAnswer {
                reused,
                detail: format!("writing the request: {e}"),
            })
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads an answer's head (interim 1xx answers are skipped).
    pub async fn head(&mut self, method: &str) -> Result<Head, Broke> {
        loop {
            let head = self.one_head(method).await?;
            if !(100..200).contains(&head.status) || head.status == 101 {
                return Ok(head);
            }
        }
    }

    async fn one_head(&mut self, method: &str) -> Result<Head, Broke> {
        let reused = self.answered > 0;
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            match self.fill().await {
                Ok(0) if self.buf.is_empty() => {
                    return Err(Broke::NoAnswer {
                        reused,
                        detail: "closed".into(),
                    });
                }
                Ok(0) => {
                    return Err(Broke::Cut(format!(
                        "closed after {} bytes of head",
                        self.buf.len()
                    )));
                }
                Ok(_) => {}
                Err(e) if self.buf.is_empty() => {
                    return Err(Broke::NoAnswer {
                        reused,
                        detail: e.to_string(),
                    });
                }
                Err(e) => return Err(Broke::Cut(format!("{e} in the head"))),
            }
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Broke::Malformed(format!("status line {status_line:?}")))?;
        if !version.starts_with("HTTP/1.") {
            return Err(Broke::Malformed(format!("status line {status_line:?}")));
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(",")
        };
        let connection = get("connection");
        let close = connection.split(',').any(|t| t.trim() == "close")
            || (version == "HTTP/1.0" && !connection.contains("keep-alive"));
        let framing = if method == "HEAD" || status == 204 || status == 304 || status < 200 {
            Framing::None
        } else if get("transfer-encoding").contains("chunked") {
            Framing::Chunked
        } else if let Some(n) = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
        {
            Framing::Length(n)
        } else if status == 101 {
            Framing::None
        } else {
            Framing::UntilClose
        };
        self.left = framing;
        self.chunk = Chunk::Size;
        Ok(Head {
            status,
            headers,
            close: close || framing == Framing::UntilClose,
            framing,
        })
    }

    /// The next piece of the body, or `None` once it ended where its framing says.
    pub async fn piece(&mut self) -> Result<Option<Vec<u8>>, Broke> {
        loop {
            match self.left {
                Framing::None => return Ok(None),
                Framing::Length(0) => {
                    self.left = Framing::None;
                    self.answered += 1;
                    return Ok(None);
                }
                Framing::Length(n) => {
                    if self.buf.is_empty() {
                        self.more("in a body with a length").await?;
                    }
                    let take = (n as usize).min(self.buf.len());
                    let piece: Vec<u8> = self.buf.drain(..take).collect();
                    self.left = Framing::Length(n - take as u64);
                    return Ok(Some(piece));
                }
                Framing::UntilClose => {
                    if !self.buf.is_empty() {
                        return Ok(Some(std::mem::take(&mut self.buf)));
                    }
                    match self.fill().await {
                        Ok(0) => {
                            self.left = Framing::None;
                            return Ok(None);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            return Err(Broke::Cut(format!("{e} in a body read to the close")));
                        }
                    }
                }
                Framing::Chunked => match self.chunk {
                    Chunk::Size => {
                        let Some(i) = find(&self.buf, b"\r\n") else {
                            self.more("before a chunk size").await?;
                            continue;
                        };
                        let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                        self.buf.drain(..i + 2);
                        let hex = line.split(';').next().unwrap_or("").trim();
                        let size = u64::from_str_radix(hex, 16)
                            .map_err(|_| Broke::Malformed(format!("chunk size {line:?}")))?;
                        self.chunk = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(n) => {
                        if self.buf.is_empty() {
                            self.more("in a chunk").await?;
                        }
                        let take = (n as usize).min(self.buf.len());
                        let piece: Vec<u8> = self.buf.drain(..take).collect();
                        let rest = n - take as u64;
                        self.chunk = if rest == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(rest)
                        };
                        return Ok(Some(piece));
                    }
                    Chunk::DataEnd => {
                        if self.buf.len() < 2 {
                            self.more("after a chunk").await?;
                            continue;
                        }
                        if &self.buf[..2] != b"\r\n" {
                            return Err(Broke::Malformed("no CRLF after a chunk".into()));
                        }
                        self.buf.drain(..2);
                        self.chunk = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let Some(i) = find(&self.buf, b"\r\n") else {
                            self.more("in the trailers").await?;
                            continue;
                        };
                        self.buf.drain(..i + 2);
                        if i == 0 {
                            self.chunk = Chunk::Done;
                        }
                    }
                    Chunk::Done => {
                        self.left = Framing::None;
                        self.answered += 1;
                        return Ok(None);
                    }
                },
            }
        }
    }

    async fn more(&mut self, where_: &str) -> Result<(), Broke> {
        match self.fill().await {
            Ok(0) => Err(Broke::Cut(format!("closed {where_}"))),
            Ok(_) => Ok(()),
            Err(e) => Err(Broke::Cut(format!("{e} {where_}"))),
        }
    }

    /// The whole body.
    pub async fn body(&mut self) -> Result<Vec<u8>, Broke> {
        let mut body = Vec::new();
        while let Some(piece) = self.piece().await? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    /// One request and its whole answer.
    pub async fn exchange(
        &mut self,
        method: &str,
        request: &[u8],
    ) -> Result<(Head, Vec<u8>), Broke> {
        self.send(request).await?;
        let head = self.head(method).await?;
        let body = self.body().await?;
        if head.framing == Framing::None {
            self.answered += 1;
        }
        Ok((head, body))
    }
}

/// A request's bytes: `method path` on `host`, with `body` (and its length) unless empty and
/// not a POST; `close` asks the server to close the connection after answering.
pub fn request(method: &str, host: &str, path: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: spinforge-soak\r\n");
    if close {
        out.push_str("connection: close\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        out.push_str(&format!(
            "content-type: application/octet-stream\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
