//! Response compression: gzip, brotli or zstd, chosen from the client's Accept-Encoding with its
//! q-values, for text bodies only; streamed chunk by chunk so that chunked responses still flow.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora_http::ResponseHeader;
use std::io::Write;

/// Bodies shorter than this are sent as they are: compression would not pay for its headers.
pub const MIN_LENGTH: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Brotli,
    Zstd,
    Gzip,
}

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }
}

/// The encoding to use for a client's `Accept-Encoding`: the highest q-value wins; on a tie,
/// the cheapest for a good ratio (zstd, then gzip, then brotli: on a 24 KB HTML page zstd
/// level 3 made 3.7 KB in ~85 µs, gzip 4.1 KB in ~50 µs, brotli quality 4 3.7 KB in ~290 µs;
/// loadtest/RESULTS.md). `None`: send the body as it is.
pub fn negotiate(accept_encoding: &[u8]) -> Option<Encoding> {
    let text = std::str::from_utf8(accept_encoding).ok()?;
    let ours = [Encoding::Zstd, Encoding::Gzip, Encoding::Brotli];
    // q in thousandths, per encoding (None: not mentioned).
    let mut q: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    for item in text.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut weight = 1000u16;
        for param in parts {
            if let Some((k, v)) = param.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                weight = parse_q(v.trim())?;
            }
        }
        match name.as_str() {
            "zstd" => q[0] = Some(weight),
            "gzip" | "x-gzip" => q[1] = Some(weight),
            "br" => q[2] = Some(weight),
            "*" => star = Some(weight),
            _ => {}
        }
    }
    let mut best: Option<(u16, Encoding)> = None;
    for (i, enc) in ours.into_iter().enumerate() {
        let w = q[i].or(star).unwrap_or(0);
        if w > 0 && best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, enc));
        }
    }
    best.map(|(_, e)| e)
}

/// A q-value ("0", "0.5", "1.000") in thousandths; `None` when malformed (the header is then
/// ignored, as if absent).
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole * 1000 + thousandths;
    (q <= 1000).then_some(q)
}

/// The `Content-Length` of a message, when there is one and it is a number.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    std::str::from_utf8(headers.get(header::CONTENT_LENGTH)?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Content types worth compressing: text, and the text formats that are not `text/*`.
pub fn compressible(content_type: &[u8]) -> bool {
    // Called on every response: lowercase into a stack buffer, not a String.
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let mut buf = [0u8; 64];
    let Some(buf) = buf.get_mut(..essence.len()) else {
        return false; // no compressible type is that long
    };
    buf.copy_from_slice(essence);
    buf.make_ascii_lowercase();
    let Ok(essence) = std::str::from_utf8(buf) else {
        return false;
    };
    if essence == "text/event-stream" {
        // Events must reach the client the moment they are sent.
        return false;
    }
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence,
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/xml"
                | "application/wasm"
                | "application/manifest+json"
                | "image/svg+xml"
                | "application/x-font-ttf"
                | "font/ttf"
                | "font/otf"
        )
}

/// What an answer's head says about compressing it, read by either front end.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerFacts<'a> {
    pub status: u16,
    pub content_type: Option<&'a [u8]>,
    /// The body is encoded already: a `Content-Encoding` line (any of them) names a coding
    /// other than `identity` ([`names_a_coding`]).
    pub encoded: bool,
    pub no_transform: bool,
    pub ranged: bool,
    /// The body's length, when the answer says it.
    pub length: Option<u64>,
    pub head_request: bool,
}

/// The one compression rule of both front ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The answer depends on Accept-Encoding (`Vary: Accept-Encoding` belongs on it).
    pub vary: bool,
    /// Compress the body with this.
    pub encode: Option<Encoding>,
}

/// Whether to compress an answer, given what the client accepts: only answers that
/// [`may_compress`] allows, not tiny ones, never for HEAD.
pub fn decision(answer: &AnswerFacts<'_>, accepted: Option<Encoding>) -> Decision {
    let allowed = may_compress(
        answer.status,
        answer.content_type,
        answer.encoded,
        answer.no_transform,
        answer.ranged,
    );
    let tiny = answer.length.is_some_and(|n| n < MIN_LENGTH);
    Decision {
        vary: allowed,
        encode: accepted.filter(|_| allowed && !tiny && !answer.head_request),
    }
}

/// Whether to compress this response, given the encoding the client accepts. Adjusts the headers
/// when it says yes (Content-Encoding, no Content-Length, a weak ETag) and adds `Vary` whenever
/// the answer depended on Accept-Encoding.
pub fn decide(
    resp: &mut ResponseHeader,
    accepted: Option<Encoding>,
    head_request: bool,
) -> Option<Encoding> {
    let h = &resp.headers;
    let facts = AnswerFacts {
        status: resp.status.as_u16(),
        content_type: h.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
        encoded: h
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| names_a_coding(v.as_bytes())),
        no_transform: h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| is_no_transform(v.as_bytes())),
        ranged: h.contains_key(header::CONTENT_RANGE),
        length: content_length(h),
        head_request,
    };
    let d = decision(&facts, accepted);
    if d.vary {
        add_vary(resp);
    }
    let enc = d.encode?;
    let _ = resp.insert_header(header::CONTENT_ENCODING, enc.token());
    resp.remove_header(&header::CONTENT_LENGTH);
    // Without a length the body must be chunked, or HTTP/1.1 clients read it until the
    // connection closes (and lose keep-alive). HTTP/2 drops the header and frames it itself.
    let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
    resp.remove_header(&header::ACCEPT_RANGES);
    if let Some(etag) = resp.headers.get(header::ETAG).cloned()
        && !etag.as_bytes().starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            let _ = resp.insert_header(header::ETAG, v);
        }
    }
    Some(enc)
}

/// Whether an answer may be compressed at all, whatever the client accepts — and so whether it
/// varies by Accept-Encoding: a 2xx (not 204, not a range) of a compressible type, not already
/// encoded, not marked `no-transform`.
pub fn may_compress(
    status: u16,
    content_type: Option<&[u8]>,
    encoded: bool,
    no_transform: bool,
    ranged: bool,
) -> bool {
    content_type.is_some_and(compressible)
        && !encoded
        && !no_transform
        && !ranged
        && status != 206
        && (200..300).contains(&status)
        && status != 204
}

/// Whether a `Content-Encoding` line names a coding other than `identity` (each line is part of
/// one list, RFC 9110 §8.4: every line counts, not only the first or the last).
pub fn names_a_coding(content_encoding: &[u8]) -> bool {
    content_encoding
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
}

/// A Cache-Control value with `no-transform`.
pub fn is_no_transform(cache_control: &[u8]) -> bool {
    cache_control
        .split(|&b| b == b',')
        .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
}

/// A Vary value that already covers Accept-Encoding.
pub fn varies_by_encoding(vary: &[u8]) -> bool {
    vary.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| t.eq_ignore_ascii_case(b"accept-encoding") || t == b"*")
}

fn add_vary(resp: &mut ResponseHeader) {
    let present = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .any(|v| varies_by_encoding(v.as_bytes()));
    if !present {
        let _ = resp.append_header(header::VARY, "Accept-Encoding");
    }
}

/// Bodies up to this size with a known length are compressed whole, in one call
/// ([`compress_whole`]): a third of the CPU of a streaming encoder flushed per read, and the
/// answer can carry a length. Longer or open-ended bodies stream ([`Encoder`]). It bounds what
/// one request makes the edge hold.
pub const WHOLE_MAX: u64 = 128 << 10;

/// Levels, chosen by measurement (loadtest/RESULTS.md, "Compression levels, chosen by
/// measurement"): fast, most of the gain.
const GZIP_WHOLE_LEVEL: i32 = 1; // libdeflate: 24 KB HTML → 4.1 KB in ~50 µs (zlib 5: 3.8 KB, ~160 µs)
const GZIP_STREAM_LEVEL: u32 = 4; // zlib-ng
const ZSTD_LEVEL: i32 = 3;
const BROTLI_QUALITY: u32 = 4;
/// Brotli's window for streams (256 KiB; its 4 MiB maximum costs memory per request for
/// nothing on web pages). Whole bodies get the smallest window that holds them.
const BROTLI_STREAM_WINDOW: u32 = 18;

thread_local! {
    // Compressor state reused across requests (zstd's are pooled: see `ZstdContext`).
    static DEFLATE: std::cell::RefCell<Option<libdeflater::Compressor>> = const { std::cell::RefCell::new(None) };
}

/// Compresses a whole body with `enc`, appending the result to `out`.
pub fn compress_whole(enc: Encoding, body: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let start = out.len();
    match enc {
        Encoding::Gzip => DEFLATE.with_borrow_mut(|c| {
            let c = c.get_or_insert_with(|| {
                libdeflater::Compressor::new(
                    libdeflater::CompressionLvl::new(GZIP_WHOLE_LEVEL).unwrap_or_default(),
                )
            });
            out.resize(start + c.gzip_compress_bound(body.len()), 0);
            let n = c
                .gzip_compress(body, &mut out[start..])
                .map_err(|e| std::io::Error::other(format!("gzip: {e:?}")))?;
            out.truncate(start + n);
            Ok(())
        }),
        Encoding::Zstd => ZstdContext::take()?.compress_whole(body, out),
        Encoding::Brotli => {
            let window = (usize::BITS - body.len().leading_zeros()).clamp(10, 22);
            let mut w =
                brotli::CompressorWriter::new(std::mem::take(out), 4096, BROTLI_QUALITY, window);
            w.write_all(body)?;
            *out = w.into_inner();
            Ok(())
        }
    }
}

/// A streaming encoder: each chunk in, whatever compressed bytes are ready out (flushed, so a
/// slow stream still reaches the client piece by piece).
pub enum Encoder {
    /// A body of known length up to [`WHOLE_MAX`]: gathered, then [`compress_whole`].
    Whole(Encoding, Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(ZstdContext),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Whole(..) => "Encoder::Whole",
            Encoder::Gzip(_) => "Encoder::Gzip",
            Encoder::Brotli(_) => "Encoder::Brotli",
            Encoder::Zstd(_) => "Encoder::Zstd",
        })
    }
}

impl Encoder {
    /// The encoder for a body of `length` (when the answer says it): whole bodies up to
    /// [`WHOLE_MAX`] are compressed in one call at their end, others stream.
    pub fn for_length(enc: Encoding, length: Option<u64>) -> std::io::Result<Encoder> {
        match length {
            Some(n) if n <= WHOLE_MAX => Ok(Encoder::Whole(enc, Vec::with_capacity(n as usize))),
            _ => Encoder::new(enc),
        }
    }

    pub fn new(enc: Encoding) -> std::io::Result<Encoder> {
        Ok(match enc {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_STREAM_LEVEL),
            )),
            Encoding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 << 10,
                BROTLI_QUALITY,
                BROTLI_STREAM_WINDOW,
            ))),
            Encoding::Zstd => Encoder::Zstd(ZstdContext::take()?),
        })
    }

    /// Compresses `chunk` (at the end of the body, finishing the stream) and appends what came
    /// out to `out` as HTTP/1.1 chunks, the last chunk included at the end.
    pub fn encode_chunked(
        &mut self,
        chunk: &[u8],
        end: bool,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let bytes = self.encode(chunk, end)?;
        if !bytes.is_empty() {
            use std::io::Write as _;
            let _ = write!(out, "{:x}\r\n", bytes.len());
            out.extend_from_slice(&bytes);
            out.extend_from_slice(b"\r\n");
        }
        if end {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Ok(())
    }

    /// Compresses `chunk`; at the end of the body, finishes the stream.
    pub fn encode(&mut self, chunk: &[u8], end: bool) -> std::io::Result<Bytes> {
        match self {
            Encoder::Whole(enc, body) => {
                body.extend_from_slice(chunk);
                if !end {
                    return Ok(Bytes::new());
                }
                let mut out = Vec::new();
                compress_whole(*enc, body, &mut out)?;
                *body = Vec::new();
                Ok(Bytes::from(out))
            }
            Encoder::Gzip(e) => {
                e.write_all(chunk)?;
                if end {
                    e.try_finish()?;
                } else {
                    e.flush()?;
                }
                Ok(Bytes::from(std::mem::take(e.get_mut())))
            }
            Encoder::Brotli(e) => {
                e.write_all(chunk)?;
                if end {
                    // CompressorWriter finishes on drop only: swap in a fresh one to end this.
                    let done = std::mem::replace(
                        e,
                        Box::new(brotli::CompressorWriter::new(Vec::new(), 0, 1, 10)),
                    );
                    Ok(Bytes::from(done.into_inner()))
                } else {
                    e.flush()?;
                    Ok(Bytes::from(std::mem::take(e.get_mut())))
                }
            }
            Encoder::Zstd(e) => e.encode(chunk, end).map(Bytes::from),
        }
    }
}

/// zstd's window: 256 KiB, as brotli's for streams (the default at level 3 is 2 MiB, which a
/// context allocates whole; a whole body's window is fitted to its length anyway).
const ZSTD_WINDOW_LOG: i32 = 18;
/// Contexts kept per thread for the next answers: bounded, since each holds ~1 MiB.
const ZSTD_CONTEXTS_KEPT: usize = 4;

thread_local! {
    static ZSTD_CONTEXTS: std::cell::RefCell<Vec<zstd::zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A zstd compression context taken from this thread's pool and given back when dropped, for a
/// whole body or a stream: a fresh context per response cost more CPU than the compressing
/// (zeroing its tables), which made zstd the dearest encoding for streamed answers.
pub struct ZstdContext {
    cctx: Option<zstd::zstd_safe::CCtx<'static>>,
}

impl std::fmt::Debug for ZstdContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZstdContext")
    }
}

impl ZstdContext {
    fn take() -> std::io::Result<ZstdContext> {
        use zstd::zstd_safe::{CCtx, CParameter};
        let cctx = match ZSTD_CONTEXTS.with_borrow_mut(Vec::pop) {
            Some(cctx) => cctx,
            None => {
                let mut cctx = CCtx::try_create()
                    .ok_or_else(|| std::io::Error::other("zstd: cannot allocate a context"))?;
                cctx.set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
                    .map_err(zstd_error)?;
                cctx.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG as u32))
                    .map_err(zstd_error)?;
                cctx
            }
        };
        Ok(ZstdContext { cctx: Some(cctx) })
    }

    /// Compresses a whole body into one frame, appending it to `out`.
    fn compress_whole(mut self, body: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let Some(cctx) = self.cctx.as_mut() else {
            return Err(std::io::Error::other("zstd: no context"));
        };
        let start = out.len();
        out.resize(start + zstd::zstd_safe::compress_bound(body.len()), 0);
        match cctx.compress2(&mut out[start..], body) {
            Ok(n) => {
                out.truncate(start + n);
                Ok(())
            }
            Err(code) => {
                out.truncate(start);
                self.cctx = None; // a context mid-error is not given back
                Err(zstd_error(code))
            }
        }
    }

    /// Compresses `chunk` and flushes it (or, at `end`, ends the frame): what comes out.
    fn encode(&mut self, chunk: &[u8], end: bool) -> std::io::Result<Vec<u8>> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let Some(cctx) = self.cctx.as_mut() else {
            return Err(std::io::Error::other("zstd: stream already failed"));
        };
        let directive = if end {
            ZSTD_EndDirective::ZSTD_e_end
        } else {
            ZSTD_EndDirective::ZSTD_e_flush
        };
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk.len()) + 64);
        let mut input = InBuffer::around(chunk);
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let filled = out.len();
            let mut output = OutBuffer::around_pos(&mut out, filled);
            let left = cctx.compress_stream2(&mut output, &mut input, directive);
            match left {
                // With a flush or an end directive, 0 means all input is in and out.
                Ok(0) => return Ok(out),
                Ok(_) => {}
                Err(code) => {
                    self.cctx = None; // a context mid-error is not given back
                    return Err(zstd_error(code));
                }
            }
        }
    }
}

impl Drop for ZstdContext {
    fn drop(&mut self) {
        use zstd::zstd_safe::ResetDirective;
        if let Some(mut cctx) = self.cctx.take()
            && cctx.reset(ResetDirective::SessionOnly).is_ok()
        {
            // The thread may be exiting (its pool gone): then the context is just freed.
            let _ = ZSTD_CONTEXTS.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < ZSTD_CONTEXTS_KEPT {
                    pool.push(cctx);
                }
            });
        }
    }
}

fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn q_values_are_honoured() {
        assert_eq!(negotiate(b"gzip, deflate, br, zstd"), Some(Encoding::Zstd));
        assert_eq!(negotiate(b"gzip, deflate, br"), Some(Encoding::Gzip));
        assert_eq!(negotiate(b"br"), Some(Encoding::Brotli));
        assert_eq!(negotiate(b"gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate(b"br;q=0.5, gzip;q=0.8"), Some(Encoding::Gzip));
        assert_eq!(negotiate(b"br;q=0, gzip;q=0"), None);
        assert_eq!(negotiate(b"identity"), None);
        assert_eq!(negotiate(b""), None);
        assert_eq!(negotiate(b"*;q=0.1, br;q=0"), Some(Encoding::Zstd));
        assert_eq!(negotiate(b"*;q=0.1, zstd;q=0"), Some(Encoding::Gzip));
        assert_eq!(negotiate(b"zstd;q=1.0, br;q=0.999"), Some(Encoding::Zstd));
        assert_eq!(negotiate(b"gzip;q=2"), None); // malformed: as if absent
    }

    #[test]
    fn text_only() {
        assert!(compressible(b"text/html; charset=utf-8"));
        assert!(compressible(b"application/json"));
        assert!(compressible(b"application/problem+json"));
        assert!(!compressible(b"image/png"));
        assert!(!compressible(b"text/event-stream"));
        assert!(!compressible(b"application/octet-stream"));
    }

    #[test]
    fn whole_bodies_round_trip() {
        let text = "hello, compressed world. ".repeat(200);
        for enc in [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd] {
            for _ in 0..2 {
                // Twice: the thread's reused compressor state must not leak between bodies.
                let mut out = b"head".to_vec();
                compress_whole(enc, text.as_bytes(), &mut out).expect("compress");
                assert!(out.starts_with(b"head"));
                let body = &out[4..];
                let back = match enc {
                    Encoding::Gzip => {
                        let mut s = String::new();
                        flate2::read::GzDecoder::new(body)
                            .read_to_string(&mut s)
                            .expect("gunzip");
                        s
                    }
                    Encoding::Brotli => {
                        let mut s = String::new();
                        brotli::Decompressor::new(body, 4096)
                            .read_to_string(&mut s)
                            .expect("unbrotli");
                        s
                    }
                    Encoding::Zstd => {
                        String::from_utf8(zstd::decode_all(body).expect("unzstd")).expect("utf8")
                    }
                };
                assert_eq!(back, text, "{enc:?}");
                assert!(body.len() < text.len() / 4, "{enc:?}: {}", body.len());
            }
        }
    }

    #[test]
    fn streams_round_trip() {
        let text = "hello, compressed world. ".repeat(200);
        for enc in [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd] {
            let mut e = Encoder::new(enc).expect("encoder");
            let mut out = Vec::new();
            for piece in text.as_bytes().chunks(700) {
                out.extend_from_slice(&e.encode(piece, false).expect("chunk"));
            }
            out.extend_from_slice(&e.encode(b"", true).expect("end"));
            let mut back = String::new();
            match enc {
                Encoding::Gzip => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_string(&mut back)
                        .expect("gunzip");
                }
                Encoding::Brotli => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_string(&mut back)
                        .expect("unbrotli");
                }
                Encoding::Zstd => {
                    back = String::from_utf8(zstd::decode_all(&out[..]).expect("unzstd"))
                        .expect("utf8");
                }
            }
            assert_eq!(back, text, "{enc:?}");
            assert!(
                out.len() < text.len() / 4,
                "{enc:?} compressed to {}",
                out.len()
            );
        }
    }

    /// A zstd context goes back to the thread's pool when its stream is dropped — ended or
    /// abandoned halfway (a client gone) — and the next stream on it starts a clean frame.
    #[test]
    fn zstd_stream_contexts_are_reused_whole() {
        let pooled = || ZSTD_CONTEXTS.with_borrow(Vec::len);
        let text = "a page that streams, with some repeats. ".repeat(300);
        let stream = |pieces: usize| {
            let mut e = Encoder::new(Encoding::Zstd).expect("encoder");
            let mut out = Vec::new();
            for piece in text.as_bytes().chunks(900).take(pieces) {
                out.extend_from_slice(&e.encode(piece, false).expect("chunk"));
            }
            out
        };
        ZSTD_CONTEXTS.with_borrow_mut(Vec::clear);
        let half = stream(5); // abandoned: never ended
        assert!(!half.is_empty(), "each chunk is flushed");
        assert_eq!(pooled(), 1, "the abandoned stream's context is kept");
        for _ in 0..3 {
            let mut e = Encoder::new(Encoding::Zstd).expect("encoder");
            assert_eq!(pooled(), 0, "the kept context is taken");
            let mut out = Vec::new();
            for piece in text.as_bytes().chunks(900) {
                out.extend_from_slice(&e.encode(piece, false).expect("chunk"));
            }
            out.extend_from_slice(&e.encode(b"", true).expect("end"));
            drop(e);
            assert_eq!(pooled(), 1);
            let back = zstd::decode_all(&out[..]).expect("a whole, clean frame");
            assert_eq!(back, text.as_bytes());
            assert!(out.len() < text.len() / 10, "compressed to {}", out.len());
        }
        // Bounded: more streams at once than the pool keeps.
        let many: Vec<_> = (0..ZSTD_CONTEXTS_KEPT + 3)
            .map(|_| Encoder::new(Encoding::Zstd).expect("encoder"))
            .collect();
        drop(many);
        assert_eq!(pooled(), ZSTD_CONTEXTS_KEPT);
    }
}
