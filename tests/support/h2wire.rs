//! HTTP/2 at the frame level, for tests that must send what a well-behaved client (the `h2`
//! crate's) refuses to — connection-specific fields, pseudo-header oddities, a Content-Length
//! that does not match the DATA sent, resets at chosen moments — and see every frame that comes
//! back (RST_STREAM codes, GOAWAY, DATA after a reset, interim HEADERS).
//!
//! [`Client`] speaks h2c with prior knowledge on a TCP connection: it answers SETTINGS and
//! PING, returns flow-control credit for the DATA it receives (unless told not to) and waits
//! for credit before it sends DATA. Its field blocks are literals without indexing (so any
//! bytes can be sent, and the server's decoder state never depends on ours); answers are read
//! with a complete HPACK decoder ([`Decoder`]: static and dynamic tables, Huffman codes of
//! RFC 7541 Appendix B).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The largest frame payload either side sends by default (SETTINGS_MAX_FRAME_SIZE).
pub const MAX_FRAME: usize = 16_384;

/// Header fields as (name, value) bytes, in order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// An error code's name (RFC 9113 §7).
pub fn reason(code: u32) -> String {
    match code {
        0x0 => "NO_ERROR".into(),
        0x1 => "PROTOCOL_ERROR".into(),
        0x2 => "INTERNAL_ERROR".into(),
        0x3 => "FLOW_CONTROL_ERROR".into(),
        0x4 => "SETTINGS_TIMEOUT".into(),
        0x5 => "STREAM_CLOSED".into(),
        0x6 => "FRAME_SIZE_ERROR".into(),
        0x7 => "REFUSED_STREAM".into(),
        0x8 => "CANCEL".into(),
        0x9 => "COMPRESSION_ERROR".into(),
        0xa => "CONNECT_ERROR".into(),
        0xb => "ENHANCE_YOUR_CALM".into(),
        0xc => "INADEQUATE_SECURITY".into(),
        0xd => "HTTP_1_1_REQUIRED".into(),
        c => format!("0x{c:x}"),
    }
}

/// A frame the server sent, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        data: Vec<u8>,
        end: bool,
    },
    /// A whole field block (HEADERS and its CONTINUATIONs), decoded.
    Headers {
        stream: u32,
        fields: Fields,
        end: bool,
    },
    Priority {
        stream: u32,
    },
    Rst {
        stream: u32,
        code: u32,
    },
    Settings {
        ack: bool,
        params: Vec<(u16, u32)>,
    },
    PushPromise {
        stream: u32,
        promised: u32,
    },
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last: u32,
        code: u32,
        debug: Vec<u8>,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Unknown {
        kind: u8,
        stream: u32,
    },
    /// A field block that did not decode (the connection is unusable after it).
    BadHeaders {
        stream: u32,
        why: String,
    },
}

/// What [`Client::next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Frame(Frame),
    /// The server closed the connection (or it broke).
    Closed,
    Timeout,
}

/// One frame's bytes: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits `first`.
fn put_int(out: &mut Vec<u8>, first: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A field block of literals without indexing and without Huffman coding: the bytes go as
/// given (upper case, control bytes, pseudo-fields anywhere, duplicates).
pub fn encode_fields<N: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(N, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend(literal_field(name.as_ref(), value.as_ref(), false));
    }
    out
}

/// One literal field without indexing (RFC 7541 §6.2.2) whose name and value strings are sent
/// as given, both marked Huffman-coded when `huffman`: strings from [`huffman_encode`] make a
/// field any decoder reads; other bytes, one it must refuse.
pub fn literal_field(name: &[u8], value: &[u8], huffman: bool) -> Vec<u8> {
    let h = if huffman { 0x80 } else { 0 };
    let mut out = vec![0x00];
    put_int(&mut out, h, 7, name.len());
    out.extend_from_slice(name);
    put_int(&mut out, h, 7, value.len());
    out.extend_from_slice(value);
    out
}

/// `src` Huffman-coded (RFC 7541 §5.2, Appendix B), padded with ones to a whole byte.
pub fn huffman_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in src {
        let len = u32::from(HUFFMAN_LENGTHS[b as usize]);
        acc = (acc << len) | u64::from(HUFFMAN_CODES[b as usize]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HPACK decoding (RFC 7541).
// ---------------------------------------------------------------------------------------------

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The Huffman code of each byte (RFC 7541 Appendix B): its bits, right-aligned.
const HUFFMAN_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// The length in bits of each byte's Huffman code.
const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

fn huffman_codes() -> &'static HashMap<(u8, u32), u8> {
    static CODES: OnceLock<HashMap<(u8, u32), u8>> = OnceLock::new();
    CODES.get_or_init(|| {
        (0..256)
            .map(|b| ((HUFFMAN_LENGTHS[b], HUFFMAN_CODES[b]), b as u8))
            .collect()
    })
}

/// A Huffman-coded string (RFC 7541 §5.2): bit by bit (slow, and plenty for tests).
pub fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, String> {
    let codes = huffman_codes();
    let mut out = Vec::new();
    let (mut code, mut len) = (0u32, 0u8);
    for byte in src {
        for i in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> i) & 1);
            len += 1;
            if let Some(b) = codes.get(&(len, code)) {
                out.push(*b);
                code = 0;
                len = 0;
            } else if len > 30 {
                return Err("invalid Huffman code".into());
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len >= 8 || code != (1u32 << len) - 1 {
        return Err("invalid Huffman padding".into());
    }
    Ok(out)
}

/// An HPACK decoder: one per connection, fed every field block in order.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    dynamic: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    /// The table size this side allows (SETTINGS_HEADER_TABLE_SIZE; 4096 unless changed).
    limit: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            limit: 4096,
            max: 4096,
        }
    }
}

fn get_int(src: &[u8], i: &mut usize, n: u8) -> Result<usize, String> {
    let max = (1usize << n) - 1;
    let first = *src.get(*i).ok_or("truncated integer")? as usize & max;
    *i += 1;
    if first < max {
        return Ok(first);
    }
    let mut value = max;
    let mut shift = 0;
    loop {
        let b = *src.get(*i).ok_or("truncated integer")?;
        *i += 1;
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        if shift > 28 {
            return Err("integer too large".into());
        }
    }
}

fn get_string(src: &[u8], i: &mut usize) -> Result<Vec<u8>, String> {
    let huffman = src.get(*i).ok_or("truncated string")? & 0x80 != 0;
    let len = get_int(src, i, 7)?;
    let bytes = src.get(*i..*i + len).ok_or("truncated string")?;
    *i += len;
    if huffman {
        huffman_decode(bytes)
    } else {
        Ok(bytes.to_vec())
    }
}

impl Decoder {
    fn entry(&self, index: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        match index {
            0 => Err("index 0".into()),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            }
            _ => self
                .dynamic
                .get(index - 62)
                .cloned()
                .ok_or_else(|| format!("index {index} past the tables")),
        }
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let Some((n, v)) = self.dynamic.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        self.size += name.len() + value.len() + 32;
        self.dynamic.push_front((name, value));
        self.evict();
    }

    /// One field block.
    pub fn decode(&mut self, src: &[u8]) -> Result<Fields, String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < src.len() {
            let b = src[i];
            if b & 0x80 != 0 {
                let index = get_int(src, &mut i, 7)?;
                out.push(self.entry(index)?);
            } else if b & 0xc0 == 0x40 || b & 0xf0 == 0x00 || b & 0xf0 == 0x10 {
                let indexing = b & 0xc0 == 0x40;
                let index = get_int(src, &mut i, if indexing { 6 } else { 4 })?;
                let name = if index == 0 {
                    get_string(src, &mut i)?
                } else {
                    self.entry(index)?.0
                };
                let value = get_string(src, &mut i)?;
                if indexing {
                    self.insert(name.clone(), value.clone());
                }
                out.push((name, value));
            } else {
                // 001xxxxx: a dynamic table size update.
                let max = get_int(src, &mut i, 5)?;
                if max > self.limit {
                    return Err(format!("table size update to {max} over {}", self.limit));
                }
                self.max = max;
                self.evict();
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------------------------

/// A frame-level HTTP/2 client on one connection (h2c, prior knowledge).
#[derive(Debug)]
pub struct Client {
    io: TcpStream,
    buf: Vec<u8>,
    decoder: Decoder,
    /// A field block still waiting for its CONTINUATIONs: stream, END_STREAM, bytes.
    partial: Option<(u32, bool, Vec<u8>)>,
    /// Frames read while waiting for flow-control credit, handed out by [`Client::next`] first.
    queued: VecDeque<Next>,
    /// Credit for received DATA is returned at once (else the test returns it itself).
    pub auto_window: bool,
    /// The server's SETTINGS_INITIAL_WINDOW_SIZE, and what each side may still send.
    initial_window: i64,
    conn_window: i64,
    stream_windows: HashMap<u32, i64>,
    /// The connection ended (read end).
    pub closed: bool,
}

impl Client {
    /// Connects, sends the preface and `settings` (SETTINGS_ENABLE_PUSH=0 is always added), and
    /// opens the connection's receive window to `conn_window` (when over the default 65,535).
    pub async fn connect(
        addr: SocketAddr,
        settings: &[(u16, u32)],
        conn_window: u32,
    ) -> std::io::Result<Client> {
        let io = TcpStream::connect(addr).await?;
        io.set_nodelay(true)?;
        let mut c = Client {
            io,
            buf: Vec::new(),
            decoder: Decoder::default(),
            partial: None,
            queued: VecDeque::new(),
            auto_window: true,
            initial_window: 65_535,
            conn_window: 65_535,
            stream_windows: HashMap::new(),
            closed: false,
        };
        let mut hello = PREFACE.to_vec();
        let mut payload = Vec::new();
        for (id, value) in [(SETTINGS_ENABLE_PUSH, 0)].iter().chain(settings) {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        hello.extend_from_slice(&frame(SETTINGS, 0, 0, &payload));
        if conn_window > 65_535 {
            hello.extend_from_slice(&frame(
                WINDOW_UPDATE,
                0,
                0,
                &(conn_window - 65_535).to_be_bytes(),
            ));
        }
        c.send_raw(&hello).await?;
        Ok(c)
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// A field block on `stream` (split into HEADERS and CONTINUATION frames as needed).
    pub async fn headers<N: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        stream: u32,
        fields: &[(N, V)],
        end: bool,
    ) -> std::io::Result<()> {
        let block = encode_fields(fields);
        let end_flag = if end { END_STREAM } else { 0 };
        let mut out = Vec::new();
        let pieces: Vec<&[u8]> = if block.is_empty() {
            vec![&[][..]]
        } else {
            block.chunks(MAX_FRAME).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let last = if i + 1 == pieces.len() {
                END_HEADERS
            } else {
                0
            };
            let (kind, flags) = if i == 0 {
                (HEADERS, end_flag | last)
            } else {
                (CONTINUATION, last)
            };
            out.extend_from_slice(&frame(kind, flags, stream, piece));
        }
        self.stream_windows
            .entry(stream)
            .or_insert(self.initial_window);
        self.send_raw(&out).await
    }

    /// DATA on `stream`, in frames of at most 16 KiB, each sent when flow control allows (an
    /// empty `data` is one empty frame). `Err` when the connection ends first.
    pub async fn data(&mut self, stream: u32, data: &[u8], end: bool) -> std::io::Result<()> {
        let flags = if end { END_STREAM } else { 0 };
        if data.is_empty() {
            return self.send_raw(&frame(DATA, flags, stream, &[])).await;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let window = self.conn_window.min(
                *self
                    .stream_windows
                    .get(&stream)
                    .unwrap_or(&self.initial_window),
            );
            if window <= 0 {
                // Wait for credit; frames read meanwhile are kept for `next`.
                let deadline = Instant::now() + std::time::Duration::from_secs(5);
                match self.read_one(deadline).await {
                    Next::Frame(f) => {
                        // A reset of this stream, or the connection going away: no credit comes.
                        let over = matches!(f, Frame::Rst { stream: s, .. } if s == stream)
                            || matches!(f, Frame::GoAway { .. });
                        self.queued.push_back(Next::Frame(f));
                        if over {
                            return Err(std::io::Error::other("the stream ended"));
                        }
                    }
                    other => {
                        self.queued.push_back(other);
                        return Err(std::io::Error::other("no flow-control credit"));
                    }
                }
                continue;
            }
            let n = rest.len().min(MAX_FRAME).min(window as usize);
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            self.conn_window -= n as i64;
            *self
                .stream_windows
                .entry(stream)
                .or_insert(self.initial_window) -= n as i64;
            let f = if rest.is_empty() { flags } else { 0 };
            self.send_raw(&frame(DATA, f, stream, piece)).await?;
        }
        Ok(())
    }

    pub async fn rst(&mut self, stream: u32, code: u32) -> std::io::Result<()> {
        self.send_raw(&frame(RST_STREAM, 0, stream, &code.to_be_bytes()))
            .await
    }

    pub async fn window_update(&mut self, stream: u32, increment: u32) -> std::io::Result<()> {
        self.send_raw(&frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes()))
            .await
    }

    pub async fn goaway(&mut self, last: u32, code: u32) -> std::io::Result<()> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        self.send_raw(&frame(GOAWAY, 0, 0, &payload)).await
    }

    /// The next frame from the server (SETTINGS and PING are answered, and DATA credited when
    /// [`Client::auto_window`], before they are returned).
    pub async fn next(&mut self, deadline: Instant) -> Next {
        if let Some(n) = self.queued.pop_front() {
            return n;
        }
        self.read_one(deadline).await
    }

    async fn read_one(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(f) = self.parse_one() {
                if let Some(f) = self.react(f).await {
                    return Next::Frame(f);
                }
                continue;
            }
            if self.closed {
                return Next::Closed;
            }
            let mut chunk = vec![0u8; 65_536];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                    if self.buf.len() < 9 {
                        return Next::Closed;
                    }
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Next::Timeout,
            }
        }
    }

    /// Answers what needs an answer; `None`: a frame that is not returned (a CONTINUATION
    /// that does not end its block).
    async fn react(&mut self, f: Frame) -> Option<Frame> {
        match &f {
            Frame::Settings { ack: false, params } => {
                for (id, value) in params {
                    if *id == SETTINGS_INITIAL_WINDOW_SIZE {
                        let delta = i64::from(*value) - self.initial_window;
                        self.initial_window = i64::from(*value);
                        for w in self.stream_windows.values_mut() {
                            *w += delta;
                        }
                    }
                }
                let _ = self.send_raw(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            Frame::Ping { ack: false, data } => {
                let data = *data;
                let _ = self.send_raw(&frame(PING, ACK, 0, &data)).await;
            }
            Frame::WindowUpdate { stream, increment } => {
                if *stream == 0 {
                    self.conn_window += i64::from(*increment);
                } else {
                    *self
                        .stream_windows
                        .entry(*stream)
                        .or_insert(self.initial_window) += i64::from(*increment);
                }
            }
            Frame::Data { stream, data, .. } if self.auto_window && !data.is_empty() => {
                let n = data.len() as u32;
                let stream = *stream;
                let mut out = frame(WINDOW_UPDATE, 0, 0, &n.to_be_bytes());
                out.extend_from_slice(&frame(WINDOW_UPDATE, 0, stream, &n.to_be_bytes()));
                let _ = self.send_raw(&out).await;
            }
            Frame::Unknown { kind, .. } if *kind == CONTINUATION => return None,
            _ => {}
        }
        Some(f)
    }

    /// One frame off the buffer, if it is all there.
    fn parse_one(&mut self) -> Option<Frame> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
        if self.buf.len() < 9 + len {
            return None;
        }
        let (kind, flags) = (self.buf[3], self.buf[4]);
        let stream =
            u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
        let payload: Vec<u8> = self.buf[9..9 + len].to_vec();
        self.buf.drain(..9 + len);
        let u32_at = |p: &[u8], i: usize| {
            p.get(i..i + 4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        // Padding and priority fields before a HEADERS or DATA payload.
        let unpadded = |p: &[u8], priority: bool| -> Vec<u8> {
            let mut p = p;
            let mut pad = 0;
            if flags & PADDED != 0 && !p.is_empty() {
                pad = p[0] as usize;
                p = &p[1..];
            }
            if priority && flags & PRIORITY_FLAG != 0 {
                p = p.get(5..).unwrap_or_default();
            }
            p[..p.len().saturating_sub(pad)].to_vec()
        };
        Some(match kind {
            DATA => Frame::Data {
                stream,
                data: unpadded(&payload, false),
                end: flags & END_STREAM != 0,
            },
            HEADERS => {
                let block = unpadded(&payload, true);
                let end = flags & END_STREAM != 0;
                if flags & END_HEADERS == 0 {
                    self.partial = Some((stream, end, block));
                    return Some(Frame::Unknown {
                        kind: CONTINUATION,
                        stream,
                    });
                }
                self.block(stream, end, &block)
            }
            CONTINUATION => {
                let Some((s, end, mut block)) = self.partial.take() else {
                    return Some(Frame::BadHeaders {
                        stream,
                        why: "CONTINUATION without HEADERS".into(),
                    });
                };
                block.extend_from_slice(&payload);
                if flags & END_HEADERS == 0 {
                    self.partial = Some((s, end, block));
                    return Some(Frame::Unknown {
                        kind: CONTINUATION,
                        stream,
                    });
                }
                self.block(s, end, &block)
            }
            PRIORITY => Frame::Priority { stream },
            RST_STREAM => Frame::Rst {
                stream,
                code: u32_at(&payload, 0),
            },
            SETTINGS => Frame::Settings {
                ack: flags & ACK != 0,
                params: payload
                    .chunks(6)
                    .filter(|c| c.len() == 6)
                    .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32_at(c, 2)))
                    .collect(),
            },
            PUSH_PROMISE => Frame::PushPromise {
                stream,
                promised: u32_at(&unpadded(&payload, false), 0) & 0x7fff_ffff,
            },
            PING => {
                let mut data = [0u8; 8];
                if payload.len() == 8 {
                    data.copy_from_slice(&payload);
                }
                Frame::Ping {
                    ack: flags & ACK != 0,
                    data,
                }
            }
            GOAWAY => Frame::GoAway {
                last: u32_at(&payload, 0) & 0x7fff_ffff,
                code: u32_at(&payload, 4),
                debug: payload.get(8..).unwrap_or_default().to_vec(),
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream,
                increment: u32_at(&payload, 0) & 0x7fff_ffff,
            },
            kind => Frame::Unknown { kind, stream },
        })
    }

    fn block(&mut self, stream: u32, end: bool, block: &[u8]) -> Frame {
        match self.decoder.decode(block) {
            Ok(fields) => Frame::Headers {
                stream,
                fields,
                end,
            },
            Err(why) => Frame::BadHeaders { stream, why },
        }
    }
}
