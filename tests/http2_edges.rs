//! HTTP/2 at its edges, through the edge's own front end (edge/src/fast/http2.rs), with a real
//! client (the `h2` crate's) and, where a test must see the frames themselves, the frame-level
//! one ([`support::h2wire`]), against an upstream in this test that records what each of its
//! connections carried and whether the edge closed it:
//!
//! - a client resets a stream mid-request-body and mid-answer: the upstream connection of that
//!   unfinished exchange is closed, never given another request, and later streams on the same
//!   client connection are answered correctly (issue 14, deliverable 3: stream resets);
//! - flow control: a client that grants a tiny window reads a 1 MB answer slowly and gets it
//!   whole, while other streams on the same connection finish meanwhile;
//! - GOAWAY on shutdown: SIGTERM while streams are in flight — the one that fits in
//!   `edge.grace` completes, a new stream after the GOAWAY is not processed, the process exits
//!   within `edge.grace`;
//! - an edge upgrade (SIGQUIT and `spinforge edge --upgrade`, as in tests/upgrade.rs) under
//!   HTTP/2 load loses no request: every request is answered, or refused in a way RFC 9113 §8.7
//!   says was not processed (and retried);
//! - interoperation: h2load over h2c and over TLS (all 2xx), curl with `--http2` and
//!   `--http2-prior-knowledge`;
//! - Huffman-coded fields (the patched `h2` decoder's buffer, vendor/h2): long, repeated on
//!   one connection, and invalid (the connection ends, no app sees the request).

mod support;

use std::io::Cursor;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::h2wire::{self, Frame, Next};
use support::spinforge::{Spinforge, Workspace, echo_app, port_block, signal};
use support::{RedisServer, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The app's name: a `*.localhost` name gets the edge's self-signed certificate over TLS.
const HOST: &str = "alpha.localhost";

// ---------------------------------------------------------------------------------------------
// The upstream.
// ---------------------------------------------------------------------------------------------

/// One upstream connection as the upstream saw it.
#[derive(Debug, Default, Clone)]
struct UpConn {
    /// The path of each request it carried (recorded when its head arrived), in order.
    paths: Vec<String>,
    /// Body bytes of the last request received so far.
    body: usize,
    /// The edge closed it (end of file, or a write failed).
    closed: bool,
}

/// An HTTP/1.1 upstream: `/slow/<ms>` answers after a while, `/big/<n>` answers `n` bytes of
/// [`pattern`] (in 64 KiB writes, `?gap=<ms>` apart), `/body` reads a body (length or chunked)
/// and says how long it was, anything else answers `saw <path>`.
#[derive(Debug, Clone)]
struct Upstream {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<UpConn>>>,
}

/// Reads more of a request into `buf`; `false`: the connection ended.
async fn more(buf: &mut Vec<u8>, s: &mut TcpStream) -> bool {
    let mut chunk = vec![0u8; 65536];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// `n` bytes that are not all alike.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("its address");
        let conns: Arc<Mutex<Vec<UpConn>>> = Arc::default();
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = {
                    let mut all = c.lock().expect("conns");
                    all.push(UpConn::default());
                    all.len() - 1
                };
                tokio::spawn(serve(stream, id, c.clone()));
            }
        });
        Upstream { addr, conns }
    }

    fn conns(&self) -> Vec<UpConn> {
        self.conns.lock().expect("conns").clone()
    }

    /// The connections that carried a request whose path starts with `prefix`.
    fn carrying(&self, prefix: &str) -> Vec<(usize, UpConn)> {
        self.conns()
            .into_iter()
            .enumerate()
            .filter(|(_, c)| c.paths.iter().any(|p| p.starts_with(prefix)))
            .collect()
    }

    /// Requests other than health checks.
    fn requests(&self) -> usize {
        self.conns()
            .iter()
            .flat_map(|c| &c.paths)
            .filter(|p| !p.starts_with("/__health"))
            .count()
    }
}

async fn serve(mut s: TcpStream, id: usize, conns: Arc<Mutex<Vec<UpConn>>>) {
    let _ = s.set_nodelay(true);
    let closed = |conns: &Arc<Mutex<Vec<UpConn>>>| conns.lock().expect("conns")[id].closed = true;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 16384];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return closed(&conns),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let path = String::from_utf8_lossy(&buf[..end])
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        buf.drain(..end);
        {
            let mut all = conns.lock().expect("conns");
            all[id].paths.push(path.clone());
            all[id].body = 0;
        }
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        // The body: a length, or chunks.
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let Some(nl) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if !more(&mut buf, &mut s).await {
                        return closed(&conns);
                    }
                    continue;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&buf[..nl])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                if buf.len() < nl + 2 + size + 2 {
                    if !more(&mut buf, &mut s).await {
                        return closed(&conns);
                    }
                    continue;
                }
                body.extend_from_slice(&buf[nl + 2..nl + 2 + size]);
                conns.lock().expect("conns")[id].body = body.len();
                if size == 0 {
                    // The last chunk: no trailers from the edge.
                    buf.drain(..nl + 4);
                    break;
                }
                buf.drain(..nl + 2 + size + 2);
            }
        } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < n {
                conns.lock().expect("conns")[id].body = buf.len();
                if !more(&mut buf, &mut s).await {
                    return closed(&conns);
                }
            }
            body.extend(buf.drain(..n));
            conns.lock().expect("conns")[id].body = n;
        }
        // The answer.
        let (plain, query) = path.split_once('?').unwrap_or((&path, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let gap: Option<u64> = param("gap").and_then(|g| g.parse().ok());
        let ctype = match param("type") {
            Some("text") => "text/plain",
            _ => "application/octet-stream",
        };
        let answer = |body: &[u8]| {
            let mut a = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            a.extend_from_slice(body);
            a
        };
        let bytes = if let Some(ms) = plain.strip_prefix("/slow/") {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer(format!("slow {ms}\n").as_bytes())
        } else if let Some(n) = plain.strip_prefix("/big/") {
            answer(&pattern(n.parse().unwrap_or(0)))
        } else if plain == "/body" {
            answer(format!("got {}\n", body.len()).as_bytes())
        } else {
            answer(format!("saw {path}\n").as_bytes())
        };
        for (i, piece) in bytes.chunks(65536).enumerate() {
            if i > 0
                && let Some(ms) = gap
            {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if s.write_all(piece).await.is_err() {
                return closed(&conns);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The edge and the client.
// ---------------------------------------------------------------------------------------------

struct Edge {
    sf: Spinforge,
    http: SocketAddr,
    https: SocketAddr,
}

/// `spinforge up` with h2c and HTTPS, `alpha.localhost` routed to `upstream`.
async fn up(ws: &Workspace, upstream: &Upstream, grace: &str) -> Edge {
    up_with(ws, upstream, grace, "").await
}

/// [`up`] with more lines under `edge:`.
async fn up_with(ws: &Workspace, upstream: &Upstream, grace: &str, edge_extra: &str) -> Edge {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{http}\n  listen_https: 127.0.0.1:{https}\n  h2c: true\n  grace: {grace}\n  metrics: off\n{edge_extra}supervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n  alpha:\n    domains: [{HOST}]\n    upstream: {}\n    health_check: {{ path: /__health }}\n",
        port_block(),
        upstream.addr
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let http: SocketAddr = ([127, 0, 0, 1], http).into();
    // Blocks this worker until the edge listens; the upstream runs on the other.
    let sf = Spinforge::start(ws, "up", &path, Some(http));
    let edge = Edge {
        sf,
        http,
        https: ([127, 0, 0, 1], https).into(),
    };
    // Routed once its health check passed.
    eventually(
        Duration::from_secs(30),
        "alpha answers over h2c",
        || async {
            let mut h2 = h2c(edge.http, client()).await.ok()?;
            let (status, _) = fetch(&mut h2, get("/ready")).await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    edge
}

/// What the `h2` crate's client sends with (any type that is a `Buf` would do).
type Body = Cursor<Vec<u8>>;
type SendRequest = h2::client::SendRequest<Body>;

fn client() -> h2::client::Builder {
    h2::client::Builder::new()
}

/// An h2c connection (prior knowledge) to `addr`, driven in the background.
async fn h2c(addr: SocketAddr, builder: h2::client::Builder) -> Result<SendRequest, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = builder
        .handshake::<_, Body>(tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn request(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{HOST}{path}"))
        .body(())
        .expect("request")
}

fn get(path: &str) -> http::Request<()> {
    request("GET", path)
}

/// The whole body, releasing flow-control credit as it comes.
async fn read_body(mut body: h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Sends a bodiless request and reads its whole answer: (status, body).
async fn fetch(
    send: &mut SendRequest,
    request: http::Request<()>,
) -> Result<(u16, Vec<u8>), h2::Error> {
    let (answer, _) = send.send_request(request, true)?;
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| h2::Error::from(h2::Reason::CANCEL))??;
    let status = answer.status().as_u16();
    Ok((status, read_body(answer.into_body()).await?))
}

/// Sends `data` on a request stream as flow control allows.
async fn send_data(stream: &mut h2::SendStream<Body>, data: Vec<u8>, end: bool) {
    let mut data = data;
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let n = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => n,
            Some(Ok(_)) => continue,
            other => panic!("no capacity to send: {other:?}"),
        };
        let rest = data.split_off(n.min(data.len()));
        let last = rest.is_empty();
        stream
            .send_data(Cursor::new(data), end && last)
            .expect("send data");
        data = rest;
    }
}

/// Later streams on the same connection each get their own answer.
async fn later_streams_are_answered(send: &mut SendRequest, tag: &str) {
    for k in 0..10 {
        let path = format!("/after-{tag}/{k}");
        let (status, body) = fetch(send, get(&path)).await.expect("a later stream");
        assert_eq!(status, 200, "{path}");
        assert_eq!(body, format!("saw {path}\n").as_bytes(), "{path}");
    }
}

/// Checks that the upstream connection that carried `prefix` was closed by the edge (its
/// exchange was left unfinished) and carried nothing after it.
async fn closed_and_not_reused(upstream: &Upstream, prefix: &str) {
    let (id, _) = eventually(
        Duration::from_secs(5),
        format!("the upstream connection of {prefix} is closed by the edge"),
        || async {
            let on = upstream.carrying(prefix);
            assert_eq!(on.len(), 1, "{prefix} went upstream once: {on:?}");
            on.into_iter().next().filter(|(_, c)| c.closed)
        },
    )
    .await;
    let conn = &upstream.conns()[id];
    assert_eq!(
        conn.paths
            .last()
            .map(String::as_str)
            .map(|p| p.starts_with(prefix)),
        Some(true),
        "nothing went on that connection after the unfinished exchange: {conn:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_mid_body_or_mid_answer_retires_its_upstream_connection() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new();
    let edge = up(&ws, &upstream, "2s").await;
    let mut send = h2c(edge.http, client()).await.expect("h2c");

    // Mid-request-body, with and without a content-length: the upstream has the head and part
    // of the body when the client resets the stream.
    for (tag, length) in [("cl", Some(200_000)), ("chunked", None)] {
        let path = format!("/body?reset-{tag}");
        let mut req = request("POST", &path);
        if let Some(n) = length {
            req.headers_mut()
                .insert("content-length", http::HeaderValue::from(n));
        }
        let (answer, mut body) = send.send_request(req, false).expect("send");
        send_data(&mut body, pattern(20_000), false).await;
        eventually(
            Duration::from_secs(5),
            format!("{tag}: part of the body reached the upstream"),
            || async {
                upstream
                    .carrying(&path)
                    .first()
                    .filter(|(_, c)| c.body > 0)
                    .map(|_| ())
            },
        )
        .await;
        body.send_reset(h2::Reason::CANCEL);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("the answer future ends")
                .is_err(),
            "{tag}: a reset stream has no answer"
        );
        closed_and_not_reused(&upstream, &path).await;
        let conn = &upstream.carrying(&path)[0].1;
        assert!(
            conn.body < 200_000,
            "{tag}: the body was never completed: {conn:?}"
        );
        later_streams_are_answered(&mut send, tag).await;
    }

    // Mid-answer: 2 MB sent slowly (about a second); the client reads for 200 ms, then resets
    // (plain, and compressed as it streams).
    for (tag, accept) in [("plain", None), ("gzip", Some("gzip"))] {
        let path = format!("/big/2000000?gap=30&type=text&{tag}");
        let mut req = get(&path);
        if let Some(a) = accept {
            req.headers_mut()
                .insert("accept-encoding", http::HeaderValue::from_static(a));
        }
        let (answer, mut stream) = send.send_request(req, true).expect("send");
        let answer = answer.await.expect("the head");
        assert_eq!(answer.status(), 200);
        if accept.is_some() {
            assert_eq!(answer.headers()["content-encoding"], "gzip");
        }
        let mut body = answer.into_body();
        let reading = Instant::now();
        let mut got = 0;
        while reading.elapsed() < Duration::from_millis(200) {
            let chunk = body.data().await.expect("more data").expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
            got += chunk.len();
        }
        assert!(got > 0, "{tag}: part of the answer came");
        stream.send_reset(h2::Reason::CANCEL);
        drop(body);
        closed_and_not_reused(&upstream, &path).await;
        later_streams_are_answered(&mut send, &format!("answer-{tag}")).await;
    }
    drop(edge.sf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_with_a_tiny_window_gets_1_mb_whole_while_other_streams_progress() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new();
    let edge = up(&ws, &upstream, "2s").await;
    // 4 KiB per stream, plenty for the connection: the slow stream holds only its own window.
    let mut builder = client();
    builder
        .initial_window_size(4096)
        .initial_connection_window_size(8 << 20);
    let send = h2c(edge.http, builder).await.expect("h2c");
    const SIZE: usize = 1 << 20;
    let started = Instant::now();
    let slow = {
        let mut send = send.clone();
        tokio::spawn(async move {
            let (answer, _) = send.send_request(get(&format!("/big/{SIZE}")), true)?;
            let answer = answer.await?;
            let mut body = answer.into_body();
            let mut out = Vec::new();
            let mut reads = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                out.extend_from_slice(&chunk);
                reads += 1;
                // Slowly: credit comes back only after a pause.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Ok::<_, h2::Error>((out, reads, started.elapsed()))
        })
    };
    // Meanwhile, other streams on the same connection: small answers and a 300 KB one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let others = (0..20).map(|k| {
        let mut send = send.clone();
        async move {
            let path = if k == 0 {
                "/big/300000".to_string()
            } else {
                format!("/other/{k}")
            };
            let (status, body) = fetch(&mut send, get(&path)).await.expect("another stream");
            assert_eq!(status, 200, "{path}");
            if k == 0 {
                assert!(body == pattern(300_000), "{path}: {} bytes", body.len());
            } else {
                assert_eq!(body, format!("saw {path}\n").as_bytes());
            }
            started.elapsed()
        }
    });
    let others = futures::future::join_all(others).await;
    let (body, reads, slow_done) = slow.await.expect("task").expect("the slow stream");
    assert!(
        body == pattern(SIZE),
        "the 1 MB answer arrived whole ({} bytes)",
        body.len()
    );
    assert!(
        reads >= SIZE / 4096,
        "the edge kept to the 4 KiB window: {reads} DATA frames"
    );
    let last_other = others.iter().max().copied().unwrap_or_default();
    eprintln!(
        "tiny window: 1 MB in {reads} DATA frames, whole after {slow_done:?}; the 20 other streams done by {last_other:?}"
    );
    assert!(
        last_other < slow_done,
        "the other streams finished ({last_other:?}) while the slow one went on ({slow_done:?})"
    );
    drop(edge.sf);
}

/// A connection that served a request and then sits idle is closed after the keep-alive
/// timeout with a GOAWAY, like one that never opened a stream (it was held until shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_its_first_request_too() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new();
    let edge = up_with(&ws, &upstream, "4s", "  keepalive_timeout: 1s\n").await;
    let mut c = h2wire::Client::connect(edge.http, &[], 1 << 20)
        .await
        .expect("connect");
    let head = vec![
        (":method".to_string(), "GET".to_string()),
        (":scheme".to_string(), "http".to_string()),
        (":authority".to_string(), HOST.to_string()),
        (":path".to_string(), "/ready".to_string()),
    ];
    c.headers(1, &head, true).await.expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut answered = None;
    let mut goaway = None;
    loop {
        match c.next(deadline).await {
            Next::Frame(Frame::Data {
                stream: 1,
                end: true,
                ..
            })
            | Next::Frame(Frame::Headers {
                stream: 1,
                end: true,
                ..
            }) => {
                answered = Some(Instant::now());
            }
            Next::Frame(Frame::GoAway { .. }) => {
                goaway = Some(Instant::now());
            }
            Next::Frame(_) => {}
            Next::Closed => break,
            Next::Timeout => panic!("the idle connection was still open after 10 s"),
        }
    }
    let answered = answered.expect("stream 1 was answered");
    let goaway = goaway.expect("a GOAWAY before the close");
    let idle = goaway - answered;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "closed {idle:?} after the answer (keepalive_timeout: 1s)"
    );
}

/// What came back on `stream`: its `:status` and body, or how it ended otherwise (`GOAWAY
/// <reason>`, `RST <reason>`, `closed`, `timeout`).
async fn h2wire_answer(c: &mut h2wire::Client, stream: u32) -> Result<(String, Vec<u8>), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut status, mut body) = (String::new(), Vec::new());
    loop {
        match c.next(deadline).await {
            Next::Frame(Frame::Headers {
                stream: s,
                fields,
                end,
            }) if s == stream => {
                if let Some((_, v)) = fields.iter().find(|(n, _)| n.as_slice() == b":status") {
                    status = String::from_utf8_lossy(v).into_owned();
                }
                if end {
                    return Ok((status, body));
                }
            }
            Next::Frame(Frame::Data {
                stream: s,
                data,
                end,
            }) if s == stream => {
                body.extend_from_slice(&data);
                if end {
                    return Ok((status, body));
                }
            }
            Next::Frame(Frame::Rst { stream: s, code }) if s == stream => {
                return Err(format!("RST {}", h2wire::reason(code)));
            }
            Next::Frame(Frame::GoAway { code, .. }) => {
                return Err(format!("GOAWAY {}", h2wire::reason(code)));
            }
            Next::Frame(_) => {}
            Next::Closed => return Err("closed".into()),
            Next::Timeout => return Err("timeout".into()),
        }
    }
}

/// Huffman-coded header strings are what browsers send, and what the `h2` crate's decoder
/// (vendor/h2: its buffer is now made per field block and given back after it) turns back into
/// bytes: a string longer than the buffer's first 4 KB, the next block on the same connection
/// after the buffer was given back, then a block whose Huffman string is not valid, which must
/// end the connection with a GOAWAY and reach no app; a new connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huffman_coded_fields_long_repeated_or_invalid_are_decoded_or_refused() {
    use h2wire::{END_HEADERS, END_STREAM, HEADERS, frame, huffman_decode, huffman_encode};
    // The encoder against RFC 7541 C.4.1, and back.
    let www = huffman_encode(b"www.example.com");
    assert_eq!(
        www,
        [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff
        ]
    );
    assert_eq!(huffman_decode(&www).expect("decodes"), b"www.example.com");

    let upstream = Upstream::start().await;
    let ws = Workspace::new();
    let edge = up(&ws, &upstream, "2s").await;
    let block = |path: &str, huffman: bool| {
        let mut b = Vec::new();
        for (n, v) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", HOST),
            (":path", path),
            ("user-agent", "huffman-test/1.0"),
        ] {
            let (n, v) = if huffman {
                (huffman_encode(n.as_bytes()), huffman_encode(v.as_bytes()))
            } else {
                (n.as_bytes().to_vec(), v.as_bytes().to_vec())
            };
            b.extend(h2wire::literal_field(&n, &v, huffman));
        }
        b
    };
    let mut c = h2wire::Client::connect(edge.http, &[], 1 << 20)
        .await
        .expect("connect");
    // 6,000 bytes once decoded ('a' is 5 bits: 3,750 on the wire).
    let long = format!("/huff/{}", "a".repeat(6000));
    for (stream, path) in [(1, long.as_str()), (3, "/huff/two"), (5, "/huff/three")] {
        let b = block(path, true);
        c.send_raw(&frame(HEADERS, END_STREAM | END_HEADERS, stream, &b))
            .await
            .expect("send");
        let (status, body) = h2wire_answer(&mut c, stream).await.expect(path);
        assert_eq!(status, "200", "{path}");
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("saw {path}\n"),
            "the path reached the app decoded"
        );
    }
    // A Huffman string of one byte 0x00: '0' (5 bits) and 3 bits of padding that are not ones.
    let mut bad = block("/huff/bad", false);
    bad.extend(h2wire::literal_field(b"x-bad", &[0x00], true));
    c.send_raw(&frame(HEADERS, END_STREAM | END_HEADERS, 7, &bad))
        .await
        .expect("send");
    // The connection ends with a GOAWAY. The h2 crate gives every failed HPACK decode
    // PROTOCOL_ERROR where RFC 9113 §4.3 says COMPRESSION_ERROR; either closes the connection.
    let ended = h2wire_answer(&mut c, 7).await;
    assert!(
        matches!(&ended, Err(e) if e == "GOAWAY PROTOCOL_ERROR" || e == "GOAWAY COMPRESSION_ERROR"),
        "{ended:?}"
    );
    assert!(
        upstream.carrying("/huff/bad").is_empty(),
        "the refused block reached no app"
    );
    // The canary: a new connection, Huffman-coded, is served.
    let mut c = h2wire::Client::connect(edge.http, &[], 1 << 20)
        .await
        .expect("connect");
    c.send_raw(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &block("/huff/after", true),
    ))
    .await
    .expect("send");
    let (status, body) = h2wire_answer(&mut c, 1).await.expect("after");
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("200", &b"saw /huff/after\n"[..])
    );
    drop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_streams_in_flight_and_refuses_new_ones_with_goaway() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new();
    // `spinforge up` gives requests half of `edge.grace` to drain (the rest is for spinlets to
    // stop): 2 s here.
    let grace = Duration::from_secs(4);
    let drain = grace / 2;
    let mut edge = up(&ws, &upstream, "4s").await;
    let mut c = h2wire::Client::connect(edge.http, &[], 1 << 20)
        .await
        .expect("connect");
    let head = |path: &str| {
        vec![
            (":method".to_string(), "GET".to_string()),
            (":scheme".to_string(), "http".to_string()),
            (":authority".to_string(), HOST.to_string()),
            (":path".to_string(), path.to_string()),
        ]
    };
    // Stream 1 fits in the drain time, stream 3 does not.
    c.headers(1, &head("/slow/1000"), true).await.expect("send");
    c.headers(3, &head("/slow/30000"), true)
        .await
        .expect("send");
    eventually(
        Duration::from_secs(5),
        "both reached the upstream",
        || async { (upstream.carrying("/slow/").len() == 2).then_some(()) },
    )
    .await;
    let pid = edge.sf.pid();
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let signalled = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let (status, took) = edge.sf.wait_exit(Duration::from_secs(15));
        (status, took, edge)
    });

    let mut frames = Vec::new();
    let mut final_goaway = None;
    let mut sent_after = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    loop {
        match c.next(deadline).await {
            Next::Frame(f) => {
                if let Frame::GoAway { last, code, .. } = &f
                    && *last != 0x7fff_ffff
                {
                    // The final GOAWAY (after the graceful one that names no stream yet):
                    // a new stream now is one the edge must not process.
                    final_goaway = Some((*last, *code, signalled.elapsed()));
                    if !sent_after {
                        sent_after = true;
                        let _ = c.headers(5, &head("/after-goaway"), true).await;
                    }
                }
                frames.push(f);
            }
            Next::Closed => break,
            Next::Timeout => panic!("the connection did not end: {frames:?}"),
        }
    }
    let (status, _, edge) = exit.await.expect("wait");
    let took = signalled.elapsed();
    assert!(status.success(), "spinforge exits cleanly: {status}");
    assert!(
        took <= grace + Duration::from_millis(500),
        "spinforge exited {took:?} after SIGTERM (grace {grace:?})"
    );
    assert!(
        took >= drain - Duration::from_millis(100),
        "the edge kept serving the stream in flight for the drain time ({drain:?}): it exited after {took:?}"
    );
    let (last, code, at) = final_goaway.unwrap_or_else(|| panic!("a final GOAWAY: {frames:?}"));
    assert_eq!(h2wire::reason(code), "NO_ERROR", "{frames:?}");
    assert!(
        (3..5).contains(&last),
        "the GOAWAY names the streams in flight (1, 3), not the later one: {last}"
    );
    // Stream 1 completed; stream 3 did not, and did not pretend to; stream 5 got nothing.
    let on = |s: u32| -> Vec<&Frame> {
        frames
            .iter()
            .filter(|f| match f {
                Frame::Headers { stream, .. }
                | Frame::Data { stream, .. }
                | Frame::Rst { stream, .. } => *stream == s,
                _ => false,
            })
            .collect()
    };
    let body: Vec<u8> = on(1)
        .iter()
        .filter_map(|f| match f {
            Frame::Data { data, .. } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(body, b"slow 1000\n", "stream 1: {:?}", on(1));
    assert!(
        on(1).iter().any(|f| matches!(
            f,
            Frame::Data { end: true, .. } | Frame::Headers { end: true, .. }
        )),
        "stream 1 ended with END_STREAM: {:?}",
        on(1)
    );
    assert!(
        !on(3).iter().any(|f| matches!(
            f,
            Frame::Data { end: true, .. } | Frame::Headers { end: true, .. }
        )),
        "stream 3 (cut at the end of the drain time) never ends as if whole: {:?}",
        on(3)
    );
    assert!(sent_after, "a stream was opened after the final GOAWAY");
    eprintln!(
        "SIGTERM: final GOAWAY {} (last stream {last}) {at:?} after; exit {took:?} after (grace {grace:?}, drain {drain:?}); stream 3's last frame: {:?}",
        h2wire::reason(code),
        on(3).last()
    );
    assert!(
        !on(5)
            .iter()
            .any(|f| matches!(f, Frame::Headers { .. } | Frame::Data { .. })),
        "stream 5, opened after the GOAWAY, is not answered: {:?}",
        on(5)
    );
    assert!(
        upstream.carrying("/after-goaway").is_empty(),
        "stream 5 never reached the upstream"
    );
    drop(edge);
}

/// Requests sent, answered, retried (refused unprocessed) and lost by one HTTP/2 client.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicUsize,
    retried: AtomicUsize,
    failed: AtomicUsize,
}

/// An HTTP/2 client sending GETs on one h2c connection (`streams` at a time) until `stop`; a
/// new connection when the old one goes away. A request the edge refused unprocessed — on a
/// stream above a GOAWAY's last stream id, or reset with REFUSED_STREAM (RFC 9113 §8.7) — is
/// sent again; any other failure is a lost request.
fn h2_load(
    addr: SocketAddr,
    host: &'static str,
    streams: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut conn: Option<SendRequest> = None;
        while !stop.load(Ordering::Relaxed) {
            let send = match conn.take() {
                Some(s) => s,
                None => match h2c(addr, client()).await {
                    Ok(s) => s,
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .expect("errors")
                            .push(format!("connect, {:?} after start: {e}", started.elapsed()));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            // A round of `streams` requests at once on this connection.
            let Ok(send) = send.ready().await else {
                continue; // going away before anything was sent: a new connection
            };
            let round = (0..streams).map(|_| {
                let mut send = send.clone();
                let (tally, errors) = (tally.clone(), errors.clone());
                async move {
                    let mut req = get("/");
                    *req.uri_mut() = format!("http://{host}/").parse().expect("uri");
                    let Ok((answer, _)) = send.send_request(req, true) else {
                        return false; // not sent: the connection is going away
                    };
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let result = tokio::time::timeout(Duration::from_secs(10), async {
                        let answer = answer.await?;
                        let status = answer.status().as_u16();
                        read_body(answer.into_body()).await.map(|_| status)
                    })
                    .await;
                    match result {
                        Ok(Ok(200)) => true,
                        Ok(Err(e))
                            if (e.is_go_away() && e.is_remote())
                                || e.reason() == Some(h2::Reason::REFUSED_STREAM) =>
                        {
                            tally.retried.fetch_add(1, Ordering::Relaxed);
                            false
                        }
                        other => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            errors
                                .lock()
                                .expect("errors")
                                .push(format!("{:?} after start: {other:?}", started.elapsed()));
                            false
                        }
                    }
                }
            });
            let all_ok = futures::future::join_all(round).await.iter().all(|ok| *ok);
            if all_ok {
                conn = Some(send);
            }
        }
        errors.lock().expect("errors").clone()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_upgrade_loses_no_http2_request() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let port = free_port();
    let yaml = format!(
        "state:\n  redis: {}\nedge:\n  listen_http: 127.0.0.1:{port}\n  h2c: true\n  grace: 5s\n  upgrade_sock: {}\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{}",
        redis.url(),
        ws.path().join("upgrade.sock").display(),
        port_block(),
        echo_app(&ws, "alpha", "alpha.test", "    idle_timeout: 0\n"),
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let _supervisor = Spinforge::start(&ws, "supervisor", &path, None);
    let mut old = Spinforge::start(&ws, "edge", &path, Some(addr));
    eventually(
        Duration::from_secs(30),
        "alpha answers over h2c",
        || async {
            let mut h2 = h2c(addr, client()).await.ok()?;
            let mut req = get("/");
            *req.uri_mut() = "http://alpha.test/".parse().ok()?;
            let (status, _) = fetch(&mut h2, req).await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let loads: Vec<_> = [1, 1, 4, 8]
        .into_iter()
        .map(|streams| h2_load(addr, "alpha.test", streams, stop.clone(), tally.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = tally.sent.load(Ordering::Relaxed);

    // The upgrade: the new edge waits for the sockets, the old one hands them over on SIGQUIT.
    let new = Spinforge::start_with(&ws, &["edge", "--upgrade"], &path, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(old.pid(), nix::sys::signal::Signal::SIGQUIT);
    eventually(
        Duration::from_secs(10),
        "the new edge took the sockets",
        || async {
            new.log_text()
                .contains("took the listening sockets over")
                .then_some(())
        },
    )
    .await;
    // (`old` stays until the end: dropping it kills what runs under the data folder, the app.)
    let (status, old) = tokio::task::spawn_blocking(move || {
        let r = old.wait_exit(Duration::from_secs(10));
        (r.0, old)
    })
    .await
    .expect("wait");
    assert!(status.success(), "the old edge exits cleanly: {status}");
    let at_exit = tally.sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for l in loads {
        errors.extend(l.await.expect("load task"));
    }
    let sent = tally.sent.load(Ordering::Relaxed);
    let retried = tally.retried.load(Ordering::Relaxed);
    assert!(sent > before + 50, "load kept flowing: {before} → {sent}");
    assert!(
        sent > at_exit + 50,
        "the clients moved to the new edge: {at_exit} → {sent} after the old one exited"
    );
    assert_eq!(
        errors.len(),
        0,
        "{} of {sent} HTTP/2 requests were lost ({retried} refused unprocessed and sent again): {errors:?}",
        errors.len()
    );
    eprintln!(
        "upgrade under HTTP/2 load: {sent} requests, {retried} refused unprocessed (sent again), none lost"
    );
    drop(new);
    drop(old);
}

/// The tail of a tool's output, for a failure message.
fn tail(out: &std::process::Output) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_and_curl_interoperate_over_h2c_and_tls() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new();
    let edge = up(&ws, &upstream, "2s").await;
    for (scheme, addr) in [("http", edge.http), ("https", edge.https)] {
        let before = upstream.requests();
        let (uri, connect) = (
            format!("{scheme}://{HOST}:{}/h2load", addr.port()),
            format!("--connect-to=127.0.0.1:{}", addr.port()),
        );
        let out = tokio::task::spawn_blocking(move || {
            Command::new("h2load")
                .args(["-n", "2000", "-c", "4", "-m", "10", &connect, &uri])
                .output()
        })
        .await
        .expect("h2load task")
        .expect("h2load runs (apt package nghttp2-client)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "h2load {scheme}: {}", tail(&out));
        assert!(
            text.contains("2000 succeeded, 0 failed, 0 errored, 0 timeout"),
            "h2load {scheme}: {}",
            tail(&out)
        );
        assert!(
            text.contains("status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx"),
            "h2load {scheme}: {}",
            tail(&out)
        );
        let protocol = if scheme == "https" { "h2" } else { "h2c" };
        assert!(
            text.contains(&format!("Application protocol: {protocol}")),
            "h2load {scheme}: {}",
            tail(&out)
        );
        assert!(
            upstream.requests() >= before + 2000,
            "every request reached the app"
        );

        // curl: --http2 over TLS (ALPN), prior knowledge over h2c; a GET and a POST body.
        // (One transfer per run: curl 7.88 fails to reuse an h2c prior-knowledge connection
        // for a second transfer, against Pingora's h2 server as well.)
        let mode = if scheme == "https" {
            "--http2"
        } else {
            "--http2-prior-knowledge"
        };
        for (path, data, want) in [
            ("/curl", None, "saw /curl\n"),
            ("/body", Some("hello curl"), "got 10\n"),
        ] {
            let mut args: Vec<String> = [
                "-sS",
                "-k",
                mode,
                "--resolve",
                &format!("{HOST}:{}:127.0.0.1", addr.port()),
                "-w",
                "%{http_version} %{response_code}",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            if let Some(d) = data {
                args.extend(["--data-binary".to_string(), d.to_string()]);
            }
            args.push(format!("{scheme}://{HOST}:{}{path}", addr.port()));
            let out =
                tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output())
                    .await
                    .expect("curl task")
                    .expect("curl runs");
            assert!(out.status.success(), "curl {scheme}{path}: {}", tail(&out));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{want}2 200"),
                "curl {scheme}{path}: {}",
                tail(&out)
            );
        }
    }
    drop(edge.sf);
}
