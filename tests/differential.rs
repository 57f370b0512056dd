//! The differential suite of issue 13: the edge's two HTTP/1.1 front ends — the fast path
//! (edge/src/fast/) and Pingora's full path (edge/src/proxy.rs) — must treat every request and
//! every upstream answer alike. One `spinforge up` runs with the fast path on, one with
//! `SPINFORGE_EDGE_FAST=0`; each case runs against both, and what the upstream received and what
//! the client got are compared after normalising only what legitimately differs ([`normalised`]).
//!
//! How it is built:
//! - Every case has its own app (`c<N>.test`) and its own *recording upstream* (a TCP listener
//!   in this test): it records the exact bytes each request arrives with, per connection and in
//!   order, and answers each request — the case's scripted raw answer ([`Act`]: bytes, delays,
//!   closes, several answers, stray bytes after one), or a plain tagged answer. Health checks
//!   (`/__health`) and warm-up requests are answered 200 and left out of the recording. One app
//!   and one upstream per case keeps the edge's upstream pools (keyed by address) apart, so a
//!   case that poisons a pooled connection can only hurt its own later requests, and cases run
//!   concurrently.
//! - The client is a raw TCP socket: the case's bytes (sometimes in several writes), then a
//!   *probe* (`GET /probe/<N>`) on the same connection if it is still open — it must be
//!   answered, correctly framed, by `probe <N>` — and for the cases that leave stray bytes on an
//!   upstream connection, *victims*: later requests on fresh connections, each of which must get
//!   its own answer.
//! - Besides the comparison, absolute checks hold on both paths ([`Abs`]): no client gets bytes
//!   meant for another request; an answer on a connection that stays open is correctly framed;
//!   no request reaches the upstream with two different Content-Lengths or with CL and TE; no
//!   forwarding header set by the client reaches the upstream.
//! - Compression (the `gz/` cases, [`compression_cases`]): requests with each shape of
//!   `Accept-Encoding` to a compressible answer, and answers of every kind (types, sizes,
//!   framings, already encoded, `no-transform`, ranges, bodiless statuses, HEAD, validators,
//!   Vary, 1xx, bad chunks, early closes, stray bytes) to `Accept-Encoding: gzip`, on apps that
//!   compress (the default) and on apps with `compression: false` ([`Case::yaml`]). Compressed
//!   bodies are compared decoded ([`decoded_body`]); the absolute checks read them decoded too.
//! - HTTP/2 (the `h2/` cases; issue 14, deliverable 3): both edges run with `edge.h2c: true`, so
//!   the fast edge serves HTTP/2 with its own front end (edge/src/fast/http2.rs) and the other
//!   with Pingora's h2 server. The client speaks h2c with prior knowledge at the frame level
//!   ([`support::h2wire`]: it sends what the `h2` crate's client refuses to, and sees every frame
//!   back); the fresh-connection victims use the `h2` crate's client. The cases
//!   ([`h2_request_cases`], [`h2_answer_cases`]): pseudo-field oddities, connection-specific
//!   fields, field syntax, forwarding claims, bodies with and without content-length (and ones
//!   that break it), empty DATA frames, trailers, resets mid-body and mid-answer, small flow-control
//!   windows, large heads, many streams at once, stream-id mistakes; and the *twin* of every
//!   HTTP/1.1 upstream-answer case and `Accept-Encoding` case ([`h2_twins`]: the same request as
//!   a stream, the same script). Then the probe on the same connection, and victims as later
//!   streams on it and on fresh connections. What the client got is compared per stream (status,
//!   fields as a multiset, decoded body, trailers, END_STREAM or RST_STREAM and its code) and
//!   per connection (GOAWAY and its code, closed or open) ([`judge_h2_client`]); what the
//!   upstream got as for HTTP/1.1, in any order (the streams are concurrent) and with chunked
//!   bodies dechunked ([`render_h2_request`]). Absolute checks for HTTP/2 besides the ones
//!   above: an answer's DATA agrees with its content-length, a bodiless answer has none, no
//!   connection-specific field, no frames after a stream ended, an upstream answer cut short or
//!   badly framed never ends with END_STREAM ([`Case::cut`]), a request the client abandoned
//!   never reaches the upstream whole ([`Abs::Completed`]), cookie fields are joined for the
//!   HTTP/1.1 hop ([`Abs::Cookies`]), and the upstream never reads a request no client sent.
//! - Differences that are acceptable are listed in [`ALLOWED`] with the reason; results known to
//!   be wrong today are listed in [`KNOWN_BUGS`] with the finding of issue 13 (0: found here).
//!   Anything else fails the test with the case and both results side by side, and so does a listed bug that
//!   no longer shows (the list must stay true: remove an entry when its fix lands).
//!
//! `DIFF_SHOW=<case name prefix>` prints both sides of the matching cases;
//! `DIFF_VERBOSE=1` prints the side-by-side of every known bug too.

mod support;

use futures::StreamExt;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::free_port;
use support::h2wire::{self, Frame, Next};
use support::spinforge::{Spinforge, Workspace, port_block};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The health-check path of every app; answered 200, never recorded.
const HEALTH: &str = "/__health";
/// What the test sends until an app is routed; answered 200, never recorded.
const WARM: &str = "/__warm";
/// How long the client waits for the answers it expects (per phase).
const PHASE: Duration = Duration::from_millis(1500);
/// After the probe's answer: how long the client keeps listening for bytes nobody asked for.
const AFTER_PROBE: Duration = Duration::from_millis(100);
/// Cases in flight at once, per edge.
const CONCURRENCY: usize = 24;
/// Victims after a case that leaves stray bytes on an upstream connection.
const VICTIMS: usize = 8;
/// A whole response that no request asked for.
const STRAY: &str = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTRAY\n";

// ---------------------------------------------------------------------------------------------
// What may differ, and what is known to be wrong today.
// ---------------------------------------------------------------------------------------------

/// Which edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Mode {
    /// The default: fast path on.
    Fast,
    /// `SPINFORGE_EDGE_FAST=0`: everything through Pingora.
    Full,
}

/// An absolute check (holds on each path on its own, whatever the other does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Abs {
    /// A client got bytes meant for another request (another client's, a stray answer, an
    /// answer to an earlier request on its connection).
    Crossed,
    /// An answer without valid framing, or garbage, on a connection the edge kept open.
    Unframed,
    /// A request reached the upstream with two different Content-Lengths, or with CL and TE.
    Smuggled,
    /// A forwarding header the client set (Forwarded, X-Forwarded-*, X-Real-IP) reached the
    /// upstream with the client's value.
    Spoofed,
    /// HTTP/2: a request the client abandoned (a reset before END_STREAM, or a body that broke
    /// its Content-Length, RFC 9113 §8.1.1) reached the upstream whole.
    Completed,
    /// HTTP/2: a request's `cookie` fields reached the HTTP/1.1 upstream as several lines
    /// (RFC 9113 §8.2.3: they are joined with `; ` before an HTTP/1.1 hop).
    Cookies,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Check {
    /// What the upstream received differs between the paths.
    Upstream,
    /// What the client got differs between the paths.
    Client,
    /// What the client got differs only in how a refusal the edge made itself looks (status
    /// 4xx/5xx with no upstream bytes in it: the edge's page or Pingora's bare one, with or
    /// without `Connection: close`) — same status, and the connection ends the same way.
    ErrorPage,
    /// An absolute check failed on one path.
    Abs(Abs, Mode),
}

/// A difference that is fine, and why. `case` may hold `*` (any run of characters).
#[derive(Debug)]
struct Allowed {
    case: &'static str,
    check: Check,
    why: &'static str,
}

/// A result known to be wrong today, with the finding of issue 13 it belongs to (0: not in the
/// issue; found by this suite). The test fails if it no longer shows: remove the entry when the
/// fix lands. `case` may hold `*` (then at least one case must still show it).
#[derive(Debug)]
struct Known {
    case: &'static str,
    check: Check,
    finding: u8,
    what: &'static str,
}

const ALLOWED: &[Allowed] = &[
    Allowed {
        case: "*",
        check: Check::ErrorPage,
        why: "both paths refuse with the same status and end the connection the same way; the \
              page differs: ours (HTML/JSON with the request id) where our code refuses, \
              Pingora's bare one (Server, empty body, `Cache-Control: private, no-store`) where \
              its HTTP parser refuses a head before our code runs, and Pingora's 502 omits \
              `Connection: close` before it closes",
    },
    // Bytes after a complete request.
    Allowed {
        case: "req/pipeline/*",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "req/pipeline/*",
        check: Check::Upstream,
        why: PIPELINING,
    },
    Allowed {
        case: "gz/req/pipelined-gzip-br",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "gz/req/pipelined-gzip-br",
        check: Check::Upstream,
        why: PIPELINING,
    },
    Allowed {
        case: "req/post/cl-body-long",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "req/post/cl-body-long",
        check: Check::Upstream,
        why: PIPELINING,
    },
    Allowed {
        case: "req/get/cl-body-long",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "req/get/cl-body-long",
        check: Check::Upstream,
        why: PIPELINING,
    },
    Allowed {
        case: "req/post/cl-body-short",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "req/post/cl-body-short",
        check: Check::Upstream,
        why: PIPELINING,
    },
    Allowed {
        case: "req/get/cl-body-short",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "req/get/cl-body-short",
        check: Check::Upstream,
        why: PIPELINING,
    },
    Allowed {
        case: "req/post/te-underscore-name",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "req/get/te-underscore-name",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "req/body/post-no-length-with-bytes",
        check: Check::Client,
        why: PIPELINING,
    },
    Allowed {
        case: "req/body/post-no-length-with-bytes",
        check: Check::Upstream,
        why: PIPELINING,
    },
    // Answers delimited by the upstream's close.
    Allowed {
        case: "ans/close-delimited",
        check: Check::Client,
        why: REFRAMED,
    },
    Allowed {
        case: "ans/close-delimited",
        check: Check::Upstream,
        why: REFRAMED,
    },
    Allowed {
        case: "ans/close-delimited-keep-alive-header",
        check: Check::Client,
        why: REFRAMED,
    },
    Allowed {
        case: "ans/close-delimited-keep-alive-header",
        check: Check::Upstream,
        why: REFRAMED,
    },
    Allowed {
        case: "ans/http10-close-delimited",
        check: Check::Client,
        why: REFRAMED,
    },
    Allowed {
        case: "ans/http10-close-delimited",
        check: Check::Upstream,
        why: REFRAMED,
    },
    Allowed {
        case: "ans/post-close-delimited",
        check: Check::Client,
        why: REFRAMED,
    },
    Allowed {
        case: "ans/post-close-delimited",
        check: Check::Upstream,
        why: REFRAMED,
    },
    Allowed {
        case: "ans/1xx-*",
        check: Check::Client,
        why: "interim (1xx) answers: Pingora runs the response filter on them too (X-Request-Id \
              and the security headers), the fast path passes them untouched; 1xx fields are \
              advisory (RFC 9110 §15.2) and the final answer carries the same headers on both",
    },
    Allowed {
        case: "ans/post-100-continue",
        check: Check::Client,
        why: "as ans/1xx-*: headers on an interim answer",
    },
    Allowed {
        case: "ans/chunked-trailers",
        check: Check::Client,
        why: "trailer fields of a chunked answer: the fast path passes the chunked body as it \
              came, trailers included; Pingora decodes and re-chunks it and drops them. RFC 9112 \
              §7.1.2: a recipient that removes the chunked coding MAY retain or discard trailer \
              fields (both paths drop them from an answer they compress, which they re-chunk)",
    },
    Allowed {
        case: "ans/cl-and-te",
        check: Check::Client,
        why: CL_AND_TE,
    },
    Allowed {
        case: "ans/cl-and-te",
        check: Check::Upstream,
        why: CL_AND_TE,
    },
    Allowed {
        case: "ans/te-and-cl",
        check: Check::Client,
        why: CL_AND_TE,
    },
    Allowed {
        case: "ans/te-and-cl",
        check: Check::Upstream,
        why: CL_AND_TE,
    },
    Allowed {
        case: "ans/obs-fold",
        check: Check::Client,
        why: "an answer with obs-fold: RFC 9112 §5.2 lets a proxy either replace it with SP \
              (Pingora) or answer 502 (the fast path)",
    },
    Allowed {
        case: "ans/obs-fold",
        check: Check::Upstream,
        why: "the probe goes out only on the connection Pingora kept (see Client)",
    },
    Allowed {
        case: "ans/space-before-colon",
        check: Check::Client,
        why: "`Content-Length : 5` in an answer: Pingora removes the space and forwards (what RFC \
              9112 §5.1 asks of a proxy), the fast path answers 502; neither passes the \
              malformed field on",
    },
    Allowed {
        case: "ans/space-before-colon",
        check: Check::Upstream,
        why: "the probe goes out only on the connection Pingora kept (see Client)",
    },
    Allowed {
        case: "ans/large-head-70k",
        check: Check::Client,
        why: HEAD_LIMITS,
    },
    Allowed {
        case: "ans/large-head-70k",
        check: Check::Upstream,
        why: HEAD_LIMITS,
    },
    Allowed {
        case: "ans/many-headers-200",
        check: Check::Client,
        why: HEAD_LIMITS,
    },
    Allowed {
        case: "ans/many-headers-200",
        check: Check::Upstream,
        why: HEAD_LIMITS,
    },
    Allowed {
        case: "ans/chunk-size-cr-inside",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "ans/chunk-size-0x",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "ans/chunk-size-leading-space",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "ans/chunk-size-plus",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "ans/chunk-size-overflow",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "ans/chunk-size-trailing-space",
        check: Check::Client,
        why: LENIENT_CHUNK_SIZE,
    },
    Allowed {
        case: "ans/chunk-size-trailing-space",
        check: Check::Upstream,
        why: LENIENT_CHUNK_SIZE,
    },
    Allowed {
        case: "ans/chunk-bare-lf",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "ans/chunk-data-no-crlf",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "req/target/long-40k",
        check: Check::Client,
        why: OVERSIZED_HEAD,
    },
    Allowed {
        case: "req/target/long-40k",
        check: Check::Upstream,
        why: OVERSIZED_HEAD,
    },
    Allowed {
        case: "req/header/long-value-40k",
        check: Check::Client,
        why: OVERSIZED_HEAD,
    },
    Allowed {
        case: "req/header/long-value-40k",
        check: Check::Upstream,
        why: OVERSIZED_HEAD,
    },
    Allowed {
        case: "req/target/space-inside",
        check: Check::Client,
        why: SPACE_IN_TARGET,
    },
    Allowed {
        case: "req/target/space-inside",
        check: Check::Upstream,
        why: SPACE_IN_TARGET,
    },
    Allowed {
        case: "req/version/http10-keep-alive",
        check: Check::Client,
        why: "HTTP/1.0 with `Connection: keep-alive`: both keep the connection; Pingora says \
              `Connection: keep-alive`, the fast path does not, so a 1.0 client closes after the \
              length-delimited answer (RFC 9112 Appendix C.2.2): one reuse lost, nothing wrong",
    },
    Allowed {
        case: "req/connection/names-x-forwarded-for",
        check: Check::Client,
        why: NAMES_XFF,
    },
    Allowed {
        case: "req/connection/names-x-forwarded-for",
        check: Check::Upstream,
        why: NAMES_XFF,
    },
    // Compression (the `gz/` cases; see `compression_cases`).
    Allowed {
        case: "gz/off/close-delimited",
        check: Check::Client,
        why: REFRAMED,
    },
    Allowed {
        case: "gz/off/close-delimited",
        check: Check::Upstream,
        why: REFRAMED,
    },
    Allowed {
        case: "gz/req/gzip-close-mid-body",
        check: Check::Client,
        why: WHOLE_BODY_CUT,
    },
    Allowed {
        case: "gz/req/br-close-mid-body",
        check: Check::Client,
        why: WHOLE_BODY_CUT,
    },
    Allowed {
        case: "gz/req/zstd-close-mid-body",
        check: Check::Client,
        why: WHOLE_BODY_CUT,
    },
    Allowed {
        case: "gz/ans/close-mid-body-cl",
        check: Check::Client,
        why: WHOLE_BODY_CUT,
    },
    Allowed {
        case: "gz/ans/close-after-head",
        check: Check::Client,
        why: WHOLE_BODY_CUT,
    },
    Allowed {
        case: "gz/ans/1xx-*",
        check: Check::Client,
        why: "as ans/1xx-*: headers on an interim answer before a compressed one",
    },
    Allowed {
        case: "gz/ans/bad-chunk-size-first",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "gz/ans/bad-chunk-size-after-good",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "gz/ans/bad-chunk-data-no-crlf",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    Allowed {
        case: "gz/ans/bad-chunk-size-bare-lf",
        check: Check::Client,
        why: BAD_CHUNKS,
    },
    // HTTP/2 (the `h2/` cases; see `h2_request_cases`, `h2_answer_cases`, `h2_twins`).
    Allowed {
        case: "h2/ans/1xx-then-close",
        check: Check::Client,
        why: H2_INTERIM_THEN_CLOSE,
    },
    Allowed {
        case: "h2/ans/chunk-bare-lf",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/chunk-data-no-crlf",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/chunk-size-0x",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/chunk-size-cr-inside",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/chunk-size-leading-space",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/chunk-size-overflow",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/chunk-size-plus",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/close-mid-body",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/close-mid-chunk",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/bad-chunk-data-no-crlf",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/bad-chunk-size-after-good",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/bad-chunk-size-bare-lf",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/bad-chunk-size-first",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/bad-chunk-size-in-later-read",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/close-after-head",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/close-before-last-chunk",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/close-mid-body-cl",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/ans/close-mid-chunk",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/req/br-close-mid-body",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/req/gzip-close-mid-body",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/gz/req/zstd-close-mid-body",
        check: Check::Client,
        why: H2_BROKEN_ANSWER,
    },
    Allowed {
        case: "h2/ans/chunk-size-trailing-space",
        check: Check::Client,
        why: H2_LENIENT_CHUNK_SIZE,
    },
    Allowed {
        case: "h2/ans/cl-and-te",
        check: Check::Client,
        why: H2_CL_AND_TE,
    },
    Allowed {
        case: "h2/ans/te-and-cl",
        check: Check::Client,
        why: H2_CL_AND_TE,
    },
    Allowed {
        case: "h2/ans/large-head-70k",
        check: Check::Client,
        why: HEAD_LIMITS,
    },
    Allowed {
        case: "h2/ans/many-headers-200",
        check: Check::Client,
        why: HEAD_LIMITS,
    },
    Allowed {
        case: "h2/ans/obs-fold",
        check: Check::Client,
        why: "an answer with obs-fold: RFC 9112 §5.2 lets a proxy either replace it with SP \
              (Pingora) or refuse the answer (the fast path: 502)",
    },
    Allowed {
        case: "h2/ans/space-before-colon",
        check: Check::Client,
        why: "`Content-Length : 5` in an answer: Pingora removes the space and forwards (what RFC \
              9112 §5.1 asks of a proxy), the fast path answers 502; neither passes the \
              malformed field on",
    },
    Allowed {
        case: "h2/ans/reset-mid-answer-gzip",
        check: Check::Client,
        why: H2_WHOLE_BODY_RESET,
    },
    Allowed {
        case: "h2/body/cl-under-data-later-frame",
        check: Check::Client,
        why: H2_LONG_BODY_LATE,
    },
    Allowed {
        case: "h2/body/cl0-with-data",
        check: Check::Upstream,
        why: H2_LONG_BODY_LATE,
    },
    Allowed {
        case: "h2/body/post-cl0-headers-end",
        check: Check::Upstream,
        why: "a POST that ends with its head and says `content-length: 0`: Pingora passes the \
              length on, the fast path sends no length (an HTTP/1.1 request without one has no \
              body, RFC 9112 §6.3 (7)); the same empty request either way",
    },
    Allowed {
        case: "h2/body/post-cl0-empty-data-end",
        check: Check::Upstream,
        why: "`content-length: 0` and then an empty DATA frame with END_STREAM: Pingora passes the \
              length on, the fast path sends `transfer-encoding: chunked` and the last chunk (it \
              frames any stream not ended with its head so); the same empty body either way",
    },
    Allowed {
        case: "h2/body/trailers-without-end-stream",
        check: Check::Upstream,
        why: "trailers without END_STREAM (malformed, RFC 9113 §8.1): both reset the stream and \
              leave the upstream an unfinished chunked request; how much of the body had gone out \
              first is timing",
    },
    Allowed {
        case: "h2/req/http2-settings",
        check: Check::Upstream,
        why: "an `http2-settings` field on an HTTP/2 request (meaningful only on an HTTP/1.1 h2c \
              upgrade, where it is listed in Connection): Pingora drops it, the fast path passes it \
              on like any field; the app ignores it either way",
    },
];

const H2_BROKEN_ANSWER: &str = "an HTTP/2 stream whose upstream answer breaks off (the \
     upstream closes before its end) or has invalid chunk framing (RFC 9112 §7.1): the fast \
     path finds out before it has sent anything and resets the stream with INTERNAL_ERROR; \
     Pingora has sent the head (and what decoded before the fault) and resets it with CANCEL. \
     Either way the stream ends in RST_STREAM, never as a whole answer (RFC 9113 §8.1); the \
     code differs (INTERNAL_ERROR says more than CANCEL, which means the sender no longer needs \
     the stream)";
const H2_INTERIM_THEN_CLOSE: &str = "an interim (103) answer, then the upstream's close: \
     Pingora answers 502; the fast path resets the stream (INTERNAL_ERROR) because it counts the \
     interim answer as an answer begun, though over HTTP/2 it drops interims and has sent \
     nothing. Both tell the client the request failed; a 502 would say more";
const H2_LENIENT_CHUNK_SIZE: &str = "`5 \\r\\n` as a chunk size (invalid by RFC 9112 §7.1): \
     Pingora accepts it and passes `hello` on, the fast path resets the stream. Neither passes \
     invalid framing on";
const H2_CL_AND_TE: &str = "an answer with both Content-Length and Transfer-Encoding: the fast \
     path refuses it (502), Pingora drops the length and passes the chunked body on. RFC 9112 \
     §6.3 (3) allows both";
const H2_WHOLE_BODY_RESET: &str = "the client resets its stream while a compressible answer of \
     known length is under way: the fast path compresses such bodies whole (up to 128 KiB), so \
     it had sent nothing yet; Pingora streams, so it had sent the head and part of the body. \
     Either way the stream ends with the client's reset";
const H2_LONG_BODY_LATE: &str = "a request body longer than its content-length, where the \
     excess comes after the request had gone upstream whole (`content-length: 0` then DATA, or \
     a later DATA frame): the h2 layer resets the stream (PROTOCOL_ERROR, RFC 9113 §8.1.1) in \
     both; the fast path frames a stream not ended with its head as chunked (so the upstream \
     is left an unfinished request) or waits for END_STREAM before it answers, Pingora sends \
     the length on and answers as soon as the upstream does. A streaming proxy cannot see this \
     malformation before the excess arrives";
const WHOLE_BODY_CUT: &str = "the upstream closes before the end of a body of known length that \
     would be compressed: the fast path compresses such bodies whole (up to 128 KiB), so it has \
     sent nothing yet and answers 502 and closes; Pingora streams, so it has sent the head and \
     part of the body and then closes. Either way no complete-looking answer reaches the client";
const PIPELINING: &str = "bytes after a complete request in the same read (pipelined requests, a \
     body longer than its Content-Length, body bytes sent without a length, a body completed by \
     a later write): Pingora answers the first request and closes (it does not reuse a session \
     it over-read, and a body read that returns more than the length ends in 400), the fast path \
     reads them as the next request (RFC 9112 §9.3.2). Both safe: nothing unframed goes upstream, \
     and a server may close instead of answering pipelined requests (clients retry them)";
const REFRAMED: &str = "an answer delimited by the upstream's close: Pingora re-frames it chunked \
     and keeps the client's connection, the fast path passes it as is with `Connection: close` \
     and closes (RFC 9112 §6.3 (8), §7); both are complete and correctly framed. The upstream \
     side differs only by the probe, sent when the connection stayed open";
const CL_AND_TE: &str = "an answer with both Content-Length and Transfer-Encoding: the fast path \
     refuses it (502, close), Pingora drops the length and forwards it chunked. RFC 9112 §6.3 (3) \
     allows both: it 'ought to be handled as an error', and an intermediary that forwards it MUST \
     first remove the Content-Length, which Pingora does";
const HEAD_LIMITS: &str = "an answer head over the fast path's limits (64 KiB, 160 fields) that \
     Pingora accepts: the fast path answers 502. Both safe; the limits are a policy choice that \
     the shared policy should make once";
const BAD_CHUNKS: &str = "an answer whose chunk framing is invalid (RFC 9112 §7.1): Pingora has \
     sent the head before it reads the bad size and ends the answer by closing mid-body; the \
     fast path sees the bad size in the first read and answers 502 before sending any of it. \
     Either way the client sees no valid answer and a close, and no invalid framing is passed on";
const LENIENT_CHUNK_SIZE: &str = "`5 \\r\\n` as a chunk size (whitespace with no extension \
     after it, invalid by RFC 9112 §7.1): Pingora accepts it and re-frames the body, the fast \
     path answers 502 and closes (so no probe follows). Neither passes invalid framing on";
const OVERSIZED_HEAD: &str = "a head over the app's 32 KiB limit: both answer 431; the fast path \
     then closes (it stopped reading at its buffer), Pingora read the head whole and keeps the \
     connection. Both safe";
const NAMES_XFF: &str = "`Connection: x-forwarded-for`: the fast path drops the client's field \
     and sets its own, Pingora refuses (400). Either way no client value reaches the app";

const KNOWN_BUGS: &[Known] = &[
    // Pingora 0.9.1's chunked-body reader (the full path, which also serves every compressed
    // answer), found by this suite (finding 0). The stale bytes stay on that app's own upstream
    // connection (pools are per upstream address), so only that app's clients can be affected.
    Known {
        case: "ans/chunk-size-empty",
        check: Check::Client,
        finding: 0,
        what: EMPTY_CHUNK_SIZE,
    },
    Known {
        case: "ans/chunk-size-empty",
        check: Check::Upstream,
        finding: 0,
        what: EMPTY_CHUNK_SIZE,
    },
    Known {
        case: "gz/ans/bad-chunk-size-empty",
        check: Check::Client,
        finding: 0,
        what: EMPTY_CHUNK_SIZE_COMPRESSED,
    },
    Known {
        case: "gz/ans/bad-chunk-size-empty",
        check: Check::Upstream,
        finding: 0,
        what: EMPTY_CHUNK_SIZE_COMPRESSED,
    },
    // Compression, found by the `gz/` cases (finding 0).
    // HTTP/2 and h2c, found by the `h2/` cases (finding 0).
    Known {
        case: "req/version/http09",
        check: Check::Client,
        finding: 0,
        what: H2C_SHORT_HEAD,
    },
    Known {
        case: "h2/ans/chunk-size-empty",
        check: Check::Client,
        finding: 0,
        what: H2_EMPTY_CHUNK_SIZE,
    },
    Known {
        case: "h2/ans/chunk-size-empty",
        check: Check::Abs(Abs::Unframed, Mode::Full),
        finding: 0,
        what: H2_EMPTY_CHUNK_SIZE,
    },
    Known {
        case: "h2/gz/ans/bad-chunk-size-empty",
        check: Check::Client,
        finding: 0,
        what: H2_EMPTY_CHUNK_SIZE,
    },
    Known {
        case: "h2/gz/ans/bad-chunk-size-empty",
        check: Check::Abs(Abs::Unframed, Mode::Full),
        finding: 0,
        what: H2_EMPTY_CHUNK_SIZE,
    },
    Known {
        case: "h2/body/*empty-data*",
        check: Check::Upstream,
        finding: 0,
        what: H2_EMPTY_DATA_END,
    },
    Known {
        case: "h2/body/*empty-data*",
        check: Check::Abs(Abs::Smuggled, Mode::Full),
        finding: 0,
        what: H2_EMPTY_DATA_END,
    },
    Known {
        case: "h2/req/authority-and-other-host",
        check: Check::Client,
        finding: 0,
        what: H2_HOST_NOT_AUTHORITY,
    },
    Known {
        case: "h2/req/authority-and-other-host",
        check: Check::Upstream,
        finding: 0,
        what: H2_HOST_NOT_AUTHORITY,
    },
    Known {
        case: "h2/req/other-authority-and-our-host",
        check: Check::Client,
        finding: 0,
        what: H2_HOST_NOT_AUTHORITY,
    },
    Known {
        case: "h2/req/other-authority-and-our-host",
        check: Check::Upstream,
        finding: 0,
        what: H2_HOST_NOT_AUTHORITY,
    },
    Known {
        case: "h2/req/authority-userinfo",
        check: Check::Client,
        finding: 0,
        what: H2_USERINFO,
    },
    Known {
        case: "h2/req/method-connect",
        check: Check::Client,
        finding: 0,
        what: H2_CONNECT,
    },
    Known {
        case: "h2/req/method-connect",
        check: Check::Upstream,
        finding: 0,
        what: H2_CONNECT,
    },
    Known {
        case: "h2/req/cookie-*",
        check: Check::Abs(Abs::Cookies, Mode::Fast),
        finding: 0,
        what: H2_COOKIES,
    },
    Known {
        case: "h2/req/cookie-*",
        check: Check::Abs(Abs::Cookies, Mode::Full),
        finding: 0,
        what: H2_COOKIES,
    },
    Known {
        case: "h2/body/trailers-with-pseudo",
        check: Check::Abs(Abs::Completed, Mode::Fast),
        finding: 0,
        what: H2_PSEUDO_TRAILERS,
    },
    Known {
        case: "h2/body/trailers-with-pseudo",
        check: Check::Abs(Abs::Completed, Mode::Full),
        finding: 0,
        what: H2_PSEUDO_TRAILERS,
    },
];

const H2C_SHORT_HEAD: &str = "full path wrong, with `edge.h2c: true` only: a complete HTTP/1.x \
     request shorter than the 24-byte HTTP/2 preface (`GET /case/N/\\r\\n\\r\\n`) is not \
     answered: Pingora waits for 24 bytes to tell h2c from HTTP/1 and answers only when more \
     bytes come (here the probe), so a short request from a client that then waits hangs until \
     a timeout (RFC 9113 §3.3: prior knowledge is recognised by the preface; a prefix that \
     already differs from it is HTTP/1). The fast path reads the head itself and answers 400";
const H2_EMPTY_CHUNK_SIZE: &str = "full path wrong, as in ans/chunk-size-empty, over HTTP/2: an \
     empty chunk-size line in the upstream's answer is taken as the last chunk, and the stream \
     ends with END_STREAM as if the answer were whole while the rest is lost (RFC 9112 §7.1: \
     chunk-size = 1*HEXDIG; RFC 9113 §8.1: a cut answer ends with RST_STREAM); the fast path \
     resets the stream";
const H2_EMPTY_DATA_END: &str = "full path wrong: an HTTP/2 request body without content-length \
     that ends with an empty DATA frame carrying END_STREAM (as many clients end a body) goes \
     to the HTTP/1.1 upstream with the last chunk twice (`0\\r\\n\\r\\n0\\r\\n\\r\\n`): \
     the second is stray bytes on the upstream connection, which the upstream reads as \
     another request (a request line `0`) and answers (RFC 9112 §7.1: one last-chunk ends the \
     body, and §6.3: what follows it is the next message). Pingora did not reuse that connection here \
     (the victims got their own answers), so the stray answer reached no one; the fast path \
     sends one last chunk";
const H2_HOST_NOT_AUTHORITY: &str = "fast path wrong: an HTTP/2 request whose `host` field \
     names another host than its `:authority` is routed by `host` (here to the other app, or \
     from the other name to this one) where it SHOULD be treated as malformed (RFC 9113 \
     §8.3.1; over TLS the certificate was chosen for `:authority`, so this lets a client reach \
     an app under another app's name); Pingora answers 400. The policy chains `:authority` \
     only when there is no `host`";
const H2_USERINFO: &str = "fast path wrong: `:authority: user@cN.test` (userinfo, which \
     `:authority` MUST NOT include, RFC 9113 §8.3.1: malformed) is looked up as a host name \
     and answered 404; Pingora answers 400, as the policy does for userinfo in an HTTP/1.1 \
     absolute-form target";
const H2_CONNECT: &str = "fast path wrong: an HTTP/2 CONNECT (`:method CONNECT`, \
     `:authority cN.test:80`, no `:path`, RFC 9113 §8.5) reaches the app as `CONNECT / \
     HTTP/1.1` (a CONNECT's target is the authority form, RFC 9112 §3.2.3; the edge tunnels \
     nothing); Pingora refuses it (405), as both paths do an HTTP/1.1 CONNECT";
const H2_COOKIES: &str = "both paths wrong: an HTTP/2 request's `cookie` fields (RFC 9113 \
     §8.2.3 lets a client split the cookie into one field per crumb) reach the HTTP/1.1 \
     upstream as several Cookie lines, where they MUST be joined with `; ` into one before an \
     HTTP/1.1 hop (RFC 9113 §8.2.3; RFC 6265 §5.4: one Cookie header). Node happens to join \
     them; other servers keep only one";
const H2_PSEUDO_TRAILERS: &str = "both paths wrong (the h2 crate, 0.4): trailers with a \
     pseudo-field (`:path`) are malformed (RFC 9113 §8.1: trailers MUST NOT include \
     pseudo-header fields; §8.1.1: a malformed request is a stream error, and an intermediary \
     MUST NOT forward it), yet the request reaches the upstream whole (the trailers dropped) \
     and is answered. Reading `RecvStream::trailers` before finishing the upstream body would \
     show the error";
const EMPTY_CHUNK_SIZE: &str = "full path wrong: an empty chunk-size line in an answer is taken \
     as the last chunk, and the client gets a complete-looking, empty body while the real one is \
     lost (RFC 9112 §7.1: chunk-size = 1*HEXDIG); the fast path closes as for any invalid size";
const EMPTY_CHUNK_SIZE_COMPRESSED: &str = "full path wrong, as in ans/chunk-size-empty, on an \
     answer it compresses: the empty chunk-size line after a good chunk ends the body, and the \
     client gets a finished, valid gzip stream holding only the chunks before it (a cut \
     representation it cannot tell from a whole one) while the rest is lost (RFC 9112 §7.1: \
     chunk-size = 1*HEXDIG); the fast path answers 502 and closes (the probe then goes out on \
     the full path's kept connection only)";
const SPACE_IN_TARGET: &str = "`GET /case/N/a b HTTP/1.1`: the fast path answers 400 (RFC 9112 \
     §3: an invalid request-line SHOULD get 400); Pingora's parser rewrites it to `/a%20b` and \
     forwards it. Only the edge with `SPINFORGE_EDGE_FAST=0` shows Pingora's side: with the fast \
     path on (the default), every HTTP/1 head, plain or TLS, is read by the fast path first, and \
     this one never reaches Pingora";

/// Whether `name` matches `pattern`, where each `*` stands for any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == name; // no `*`
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

// ---------------------------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------------------------

/// What the client does. Byte strings are templates: `$H` is the case's host (`c<N>.test`),
/// `$P` its path prefix (`/case/<N>/`), `$N` its number.
#[derive(Debug, Clone)]
enum Step {
    Write(Vec<u8>),
    /// Waits (reading whatever arrives meanwhile).
    Sleep(u64),
}

/// What the recording upstream does for a case request.
#[derive(Debug, Clone)]
enum Act {
    Send(Vec<u8>),
    Sleep(u64),
    /// Closes the connection (nothing more is read from it).
    Close,
    /// The plain answer `case <N> saw <target>` (for cases of several streams, each of which
    /// must get its own).
    Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A client-side variation; the upstream answers plainly.
    Request,
    /// An upstream-answer variation; the client sends a plain request.
    Answer,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    kind: Kind,
    steps: Vec<Step>,
    /// The method of each request the client means to send (for HEAD framing); as many answers
    /// are expected.
    methods: Vec<String>,
    /// The upstream's answer to each case request; `None`: `case <N> #<i>` with a length.
    script: Option<Vec<Act>>,
    /// Wait this long (ms) after the answers before the probe (for delayed upstream bytes).
    settle: u64,
    victims: usize,
    /// Extra lines of the case's app in `spinforge.yaml` (each `    key: value\n`).
    yaml: &'static str,
    /// An HTTP/2 case: what the client does (then `steps` is empty).
    h2: Option<Vec<H2Step>>,
    /// HTTP/2: the upstream's answer is cut short or its framing is invalid: no stream may end
    /// it with END_STREAM as if it were whole.
    cut: bool,
    /// HTTP/2: the client abandons its request (a reset, or a body that breaks its
    /// Content-Length): the upstream must never receive it complete.
    aborted: bool,
}

fn method_of(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| !b"\r\n".contains(b)).unwrap_or(0);
    let word = bytes[start..]
        .split(|b| *b == b' ' || *b == b'\t')
        .next()
        .unwrap_or_default();
    String::from_utf8_lossy(word).into_owned()
}

impl Case {
    /// One request, written at once.
    fn req(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Case {
        let bytes = bytes.into();
        Case {
            name: name.into(),
            kind: Kind::Request,
            methods: vec![method_of(&bytes)],
            steps: vec![Step::Write(bytes)],
            script: None,
            settle: 0,
            victims: 0,
            yaml: "",
            h2: None,
            cut: false,
            aborted: false,
        }
    }

    /// Several requests (pipelined in one write, or in steps).
    fn pipelined(name: impl Into<String>, bytes: impl Into<Vec<u8>>, methods: &[&str]) -> Case {
        let mut c = Case::req(name, bytes);
        c.methods = methods.iter().map(|m| m.to_string()).collect();
        c
    }

    fn in_steps(name: impl Into<String>, steps: Vec<Step>) -> Case {
        let first = match steps.first() {
            Some(Step::Write(b)) => method_of(b),
            _ => "GET".to_string(),
        };
        Case {
            name: name.into(),
            kind: Kind::Request,
            steps,
            methods: vec![first],
            script: None,
            settle: 0,
            victims: 0,
            yaml: "",
            h2: None,
            cut: false,
            aborted: false,
        }
    }

    /// A plain request of `method` answered by `script`.
    fn answer(name: impl Into<String>, method: &str, script: Vec<Act>) -> Case {
        let request = match method {
            "POST" => "POST $P HTTP/1.1\r\nHost: $H\r\nContent-Length: 5\r\n\r\nhello".to_string(),
            m => format!("{m} $P HTTP/1.1\r\nHost: $H\r\n\r\n"),
        };
        let settle = script
            .iter()
            .map(|a| match a {
                Act::Sleep(ms) => *ms,
                _ => 0,
            })
            .sum::<u64>();
        let mut c = Case::req(name, request);
        c.kind = Kind::Answer;
        c.settle = if settle > 0 { settle + 150 } else { 0 };
        c.script = Some(script);
        c
    }

    fn victims(mut self) -> Case {
        self.victims = VICTIMS;
        self
    }

    /// The case's app gets these extra lines in `spinforge.yaml`.
    fn yaml(mut self, lines: &'static str) -> Case {
        self.yaml = lines;
        self
    }
}

fn send(bytes: impl AsRef<[u8]>) -> Act {
    Act::Send(bytes.as_ref().to_vec())
}

/// `$H`, `$P`, `$N` filled in for case `id`.
fn fill(template: &[u8], id: usize) -> Vec<u8> {
    let host = format!("c{id}.test");
    let path = format!("/case/{id}/");
    let n = id.to_string();
    let mut out = Vec::with_capacity(template.len() + 32);
    let mut i = 0;
    while i < template.len() {
        if template[i] == b'$' && i + 1 < template.len() {
            let with: Option<&str> = match template[i + 1] {
                b'H' => Some(&host),
                b'P' => Some(&path),
                b'N' => Some(&n),
                _ => None,
            };
            if let Some(w) = with {
                out.extend_from_slice(w.as_bytes());
                i += 2;
                continue;
            }
        }
        out.push(template[i]);
        i += 1;
    }
    out
}

/// `METHOD $P HTTP/1.1`, Host, `extra` header lines (each ending in CRLF), the blank line, `body`.
fn plain(method: &str, extra: &str, body: &str) -> String {
    format!("{method} $P HTTP/1.1\r\nHost: $H\r\n{extra}\r\n{body}")
}

const CHUNKED_BODY: &str = "5\r\nhello\r\n0\r\n\r\n";

fn request_cases() -> Vec<Case> {
    let mut v = Vec::new();

    // Content-Length variants, on a POST and on a GET.
    const LENGTHS: &[(&str, &str, &str)] = &[
        ("cl-5", "Content-Length: 5\r\n", "hello"),
        ("cl-0", "Content-Length: 0\r\n", ""),
        (
            "cl-dup-same",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "hello",
        ),
        (
            "cl-dup-diff",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "hello!",
        ),
        ("cl-list-same", "Content-Length: 5, 5\r\n", "hello"),
        ("cl-list-diff", "Content-Length: 5, 6\r\n", "hello!"),
        ("cl-list-trailing-comma", "Content-Length: 5,\r\n", "hello"),
        ("cl-plus", "Content-Length: +5\r\n", "hello"),
        ("cl-minus", "Content-Length: -5\r\n", "hello"),
        ("cl-spaces-around", "Content-Length:    5   \r\n", "hello"),
        ("cl-space-inside", "Content-Length: 5 5\r\n", "hello"),
        ("cl-leading-zeros", "Content-Length: 005\r\n", "hello"),
        ("cl-hex", "Content-Length: 0x5\r\n", "hello"),
        ("cl-empty", "Content-Length: \r\n", ""),
        (
            "cl-huge",
            "Content-Length: 99999999999999999999999\r\n",
            "hello",
        ),
        (
            "cl-u64-overflow",
            "Content-Length: 18446744073709551616\r\n",
            "hello",
        ),
        ("cl-over-limit", "Content-Length: 20000000\r\n", "hello"),
        ("cl-space-before-colon", "Content-Length : 5\r\n", "hello"),
        ("cl-tab-value", "Content-Length:\t5\r\n", "hello"),
        ("cl-lowercase-name", "content-length: 5\r\n", "hello"),
        ("cl-obs-fold", "Content-Length:\r\n 5\r\n", "hello"),
        ("cl-body-short", "Content-Length: 10\r\n", "hello"),
        ("cl-body-long", "Content-Length: 3\r\n", "hello"),
    ];
    for method in ["POST", "GET"] {
        for (name, extra, body) in LENGTHS {
            v.push(Case::req(
                format!("req/{}/{name}", method.to_lowercase()),
                plain(method, extra, body),
            ));
        }
    }

    // Transfer-Encoding variants, on a POST and on a GET, with a chunked body.
    const CODINGS: &[(&str, &str)] = &[
        ("te-chunked", "Transfer-Encoding: chunked\r\n"),
        ("te-chunked-upper", "Transfer-Encoding: CHUNKED\r\n"),
        ("te-chunked-gzip", "Transfer-Encoding: chunked, gzip\r\n"),
        ("te-gzip-chunked", "Transfer-Encoding: gzip, chunked\r\n"),
        ("te-identity", "Transfer-Encoding: identity\r\n"),
        (
            "te-identity-chunked",
            "Transfer-Encoding: identity, chunked\r\n",
        ),
        (
            "te-twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "te-gzip-then-chunked",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "te-chunked-then-identity",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
        (
            "te-and-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        ),
        (
            "cl-and-te",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "te-and-cl-empty",
            "Transfer-Encoding: chunked\r\nContent-Length:\r\n",
        ),
        ("te-tab-before", "Transfer-Encoding:\tchunked\r\n"),
        ("te-trailing-space", "Transfer-Encoding: chunked \r\n"),
        ("te-vertical-tab", "Transfer-Encoding:\x0bchunked\r\n"),
        ("te-space-before-colon", "Transfer-Encoding : chunked\r\n"),
        ("te-obs-fold", "Transfer-Encoding:\r\n chunked\r\n"),
        (
            "te-hidden-by-fold",
            "X-Pad: a\r\n Transfer-Encoding: chunked\r\n",
        ),
        ("te-xchunked", "Transfer-Encoding: xchunked\r\n"),
        ("te-chunked-param", "Transfer-Encoding: chunked;q=1\r\n"),
        ("te-empty", "Transfer-Encoding: \r\n"),
        ("te-leading-comma", "Transfer-Encoding: ,chunked\r\n"),
        ("te-nul", "Transfer-Encoding: chunked\x00\r\n"),
        ("te-underscore-name", "Transfer_Encoding: chunked\r\n"),
    ];
    for method in ["POST", "GET"] {
        for (name, extra) in CODINGS {
            v.push(Case::req(
                format!("req/{}/{name}", method.to_lowercase()),
                plain(method, extra, CHUNKED_BODY),
            ));
        }
    }

    // Chunked bodies with odd chunk framing.
    const CHUNKS: &[(&str, &str)] = &[
        ("chunk-ext", "5;ext=1\r\nhello\r\n0\r\n\r\n"),
        ("chunk-ext-quoted", "5;a=\"b c\"\r\nhello\r\n0\r\n\r\n"),
        ("chunk-ext-bws", "5 ;a=b\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-trailing-space", "5 \r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-leading-space", " 5\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-0x", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-plus", "+5\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-leading-zeros", "0005\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-upper-hex", "A\r\nhellohello\r\n0\r\n\r\n"),
        (
            "chunk-size-overflow",
            "fffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk-size-cr-inside",
            "1\r2\r\nabcdefghijklmnopqr\r\n0\r\n\r\n",
        ),
        ("chunk-bare-lf", "5\nhello\n0\n\n"),
        ("chunk-lf-after-data", "5\r\nhello\n0\r\n\r\n"),
        ("chunk-data-no-crlf", "5\r\nhelloXX0\r\n\r\n"),
        ("chunk-data-too-long", "3\r\nhello\r\n0\r\n\r\n"),
        ("chunk-trailers", "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        (
            "chunk-trailer-cl",
            "5\r\nhello\r\n0\r\nContent-Length: 9\r\n\r\n",
        ),
        ("chunk-no-last", "5\r\nhello\r\n"),
        ("chunk-last-no-crlf", "5\r\nhello\r\n0\r\n"),
        ("chunk-several", "1\r\nh\r\n4\r\nello\r\n0\r\n\r\n"),
        ("chunk-empty-body", "0\r\n\r\n"),
    ];
    for (name, body) in CHUNKS {
        v.push(Case::req(
            format!("req/post/{name}"),
            plain("POST", "Transfer-Encoding: chunked\r\n", body),
        ));
    }

    // Request smuggling shapes.
    v.push(Case::req(
        "req/smuggle/cl-te-classic",
        plain(
            "POST",
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\nX",
        ),
    ));
    v.push(Case::req(
        "req/smuggle/te-cl-classic",
        plain(
            "POST",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            "8\r\nSMUGGLED\r\n0\r\n\r\n",
        ),
    ));
    v.push(Case::req(
        "req/smuggle/bare-lf-te-empty-cl",
        "POST $P HTTP/1.1\nHost: $H\nTransfer-Encoding: chunked\nContent-Length:\n\n5\r\nhello\r\n0\r\n\r\n",
    ));
    let inner = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    v.push(Case::req(
        "req/smuggle/request-in-body",
        plain(
            "POST",
            &format!("Content-Length: {}\r\n", inner.len()),
            inner,
        ),
    ));

    // Methods.
    for m in [
        "GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "FOO", "PROPFIND", "M-SEARCH", "get", "Get",
    ] {
        v.push(Case::req(
            format!(
                "req/method/{}",
                match m {
                    "get" => "get-lowercase".to_string(),
                    "Get" => "get-mixed-case".to_string(),
                    m => m.to_lowercase(),
                }
            ),
            plain(m, "", ""),
        ));
    }
    for m in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        v.push(Case::req(
            format!("req/method/{}-with-body", m.to_lowercase()),
            plain(m, "Content-Length: 5\r\n", "hello"),
        ));
    }
    v.push(Case::req(
        "req/method/connect",
        "CONNECT $H:80 HTTP/1.1\r\nHost: $H:80\r\n\r\n",
    ));
    v.push(Case::req(
        "req/method/connect-origin-form",
        plain("CONNECT", "", ""),
    ));
    v.push(Case::req(
        "req/method/long",
        plain(&"X".repeat(200), "", ""),
    ));
    v.push(Case::req("req/method/bad-char", plain("G@T", "", "")));
    v.push(Case::req(
        "req/method/head-with-body",
        plain("HEAD", "Content-Length: 5\r\n", "hello"),
    ));

    // Request targets.
    let targets: &[(&str, &str, &str)] = &[
        ("origin-query", "$P?x=1&y=%20", "Host: $H\r\n"),
        ("absolute-same-host", "http://$H$P", "Host: $H\r\n"),
        ("absolute-same-host-port", "http://$H:80$P", "Host: $H\r\n"),
        ("absolute-uppercase", "HTTP://C$N.TEST$P", "Host: $H\r\n"),
        ("absolute-https", "https://$H$P", "Host: $H\r\n"),
        ("absolute-other-app", "http://other.test$P", "Host: $H\r\n"),
        (
            "absolute-unknown-host",
            "http://evil.example$P",
            "Host: $H\r\n",
        ),
        (
            "absolute-host-header-other",
            "http://$H$P",
            "Host: other.test\r\n",
        ),
        ("absolute-no-host-header", "http://$H$P", ""),
        ("absolute-no-path", "http://$H", "Host: $H\r\n"),
        ("absolute-userinfo", "http://user:pass@$H$P", "Host: $H\r\n"),
        (
            "absolute-userinfo-evil",
            "http://$H@evil.example$P",
            "Host: $H\r\n",
        ),
        (
            "absolute-acme-token",
            "http://$H/.well-known/acme-challenge/tok$N",
            "Host: $H\r\n",
        ),
        (
            "acme-token",
            "/.well-known/acme-challenge/tok$N",
            "Host: $H\r\n",
        ),
        ("authority-form-get", "$H:80", "Host: $H\r\n"),
        ("asterisk-get", "*", "Host: $H\r\n"),
        ("double-slash", "//x", "Host: $H\r\n"),
        ("double-slash-host", "//evil.example/x", "Host: $H\r\n"),
        ("percent-encoded", "$P%2e%2e/%2F%00?q=%ff", "Host: $H\r\n"),
        ("dot-segments", "$P../../etc/passwd", "Host: $H\r\n"),
        ("raw-utf8", "$P\u{e9}t\u{e9}", "Host: $H\r\n"),
        ("fragment", "$P#frag", "Host: $H\r\n"),
        ("no-leading-slash", "case/$N/", "Host: $H\r\n"),
        ("backslash", "$P..\\..\\x", "Host: $H\r\n"),
        ("space-inside", "$Pa b", "Host: $H\r\n"),
    ];
    for (name, target, host) in targets {
        v.push(Case::req(
            format!("req/target/{name}"),
            format!("GET {target} HTTP/1.1\r\n{host}\r\n"),
        ));
    }
    v.push(Case::req(
        "req/target/asterisk-options",
        "OPTIONS * HTTP/1.1\r\nHost: $H\r\n\r\n",
    ));
    v.push(Case::req(
        "req/target/empty",
        "GET  HTTP/1.1\r\nHost: $H\r\n\r\n",
    ));
    v.push(Case::req(
        "req/target/tab-separated",
        "GET\t$P\tHTTP/1.1\r\nHost: $H\r\n\r\n",
    ));
    v.push(Case::req(
        "req/target/double-space",
        "GET  $P HTTP/1.1\r\nHost: $H\r\n\r\n",
    ));
    for len in [2_000, 8_000, 20_000, 40_000] {
        v.push(Case::req(
            format!("req/target/long-{}k", len / 1000),
            format!("GET $P{} HTTP/1.1\r\nHost: $H\r\n\r\n", "a".repeat(len)),
        ));
    }

    // Host variants.
    let hosts: &[(&str, &str)] = &[
        ("missing", ""),
        ("two-same", "Host: $H\r\nHost: $H\r\n"),
        ("two-different", "Host: $H\r\nHost: other.test\r\n"),
        ("two-different-reversed", "Host: other.test\r\nHost: $H\r\n"),
        ("port-80", "Host: $H:80\r\n"),
        ("port-other", "Host: $H:8080\r\n"),
        ("uppercase", "Host: C$N.TEST\r\n"),
        ("trailing-dot", "Host: $H.\r\n"),
        ("empty", "Host: \r\n"),
        ("spaces-around", "Host:    $H   \r\n"),
        ("tab", "Host:\t$H\r\n"),
        ("with-path", "Host: $H/x\r\n"),
        ("userinfo", "Host: u@$H\r\n"),
        ("bad-port", "Host: $H:abc\r\n"),
        ("comma-list", "Host: $H, other.test\r\n"),
        ("ip", "Host: 127.0.0.1\r\n"),
        ("ipv6", "Host: [::1]:80\r\n"),
        ("unknown", "Host: evil.example\r\n"),
        ("nul", "Host: $H\x00\r\n"),
        ("lowercase-name", "host: $H\r\n"),
        ("space-before-colon", "Host : $H\r\n"),
    ];
    for (name, lines) in hosts {
        v.push(Case::req(
            format!("req/host/{name}"),
            format!("GET $P HTTP/1.1\r\n{lines}\r\n"),
        ));
    }

    // Versions and connection management.
    let versions: &[(&str, &str)] = &[
        ("http10", "GET $P HTTP/1.0\r\nHost: $H\r\n\r\n"),
        (
            "http10-keep-alive",
            "GET $P HTTP/1.0\r\nHost: $H\r\nConnection: keep-alive\r\n\r\n",
        ),
        (
            "http10-post",
            "POST $P HTTP/1.0\r\nHost: $H\r\nContent-Length: 5\r\n\r\nhello",
        ),
        ("http10-no-host", "GET $P HTTP/1.0\r\n\r\n"),
        (
            "http10-chunked",
            "POST $P HTTP/1.0\r\nHost: $H\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("http09", "GET $P\r\n\r\n"),
        ("lowercase-version", "GET $P http/1.1\r\nHost: $H\r\n\r\n"),
        ("http12", "GET $P HTTP/1.2\r\nHost: $H\r\n\r\n"),
        ("http20", "GET $P HTTP/2.0\r\nHost: $H\r\n\r\n"),
        ("http99", "GET $P HTTP/9.9\r\nHost: $H\r\n\r\n"),
        ("http1", "GET $P HTTP/1\r\nHost: $H\r\n\r\n"),
        ("extra-token", "GET $P HTTP/1.1 x\r\nHost: $H\r\n\r\n"),
    ];
    for (name, bytes) in versions {
        v.push(Case::req(format!("req/version/{name}"), *bytes));
    }
    let connections: &[(&str, &str)] = &[
        ("close", "Connection: close\r\n"),
        ("close-upper", "Connection: CLOSE\r\n"),
        ("keep-alive", "Connection: keep-alive\r\n"),
        ("keep-alive-and-close", "Connection: keep-alive, close\r\n"),
        (
            "two-headers",
            "Connection: keep-alive\r\nConnection: close\r\n",
        ),
        ("empty", "Connection: \r\n"),
        ("upgrade-alone", "Connection: upgrade\r\n"),
        ("names-custom", "Connection: x-secret\r\nX-Secret: 1\r\n"),
        ("names-te", "Connection: TE\r\nTE: trailers\r\n"),
        ("names-host", "Connection: host\r\n"),
        (
            "names-x-forwarded-for",
            "Connection: x-forwarded-for\r\nX-Forwarded-For: spoof\r\n",
        ),
        (
            "names-x-request-id",
            "Connection: x-request-id\r\nX-Request-Id: mine-1\r\n",
        ),
    ];
    for (name, extra) in connections {
        v.push(Case::req(
            format!("req/connection/{name}"),
            plain("GET", extra, ""),
        ));
    }
    v.push(Case::req(
        "req/connection/names-content-length",
        plain(
            "POST",
            "Connection: content-length\r\nContent-Length: 5\r\n",
            "hello",
        ),
    ));

    // Pipelining: 2-3 requests in one write.
    let get = "GET $P HTTP/1.1\r\nHost: $H\r\n\r\n";
    let get_b = "GET $Pb HTTP/1.1\r\nHost: $H\r\n\r\n";
    let get_c = "GET $Pc HTTP/1.1\r\nHost: $H\r\n\r\n";
    v.push(Case::pipelined(
        "req/pipeline/get-get",
        format!("{get}{get_b}"),
        &["GET", "GET"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/get-get-get",
        format!("{get}{get_b}{get_c}"),
        &["GET", "GET", "GET"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/post-get",
        format!("{}{get_b}", plain("POST", "Content-Length: 5\r\n", "hello")),
        &["POST", "GET"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/head-get",
        format!("{}{get_b}", plain("HEAD", "", "")),
        &["HEAD", "GET"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/close-then-get",
        format!("{}{get_b}", plain("GET", "Connection: close\r\n", "")),
        &["GET", "GET"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/chunked-then-get",
        format!(
            "{}{get_b}",
            plain("POST", "Transfer-Encoding: chunked\r\n", CHUNKED_BODY)
        ),
        &["POST", "GET"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/get-then-chunked",
        format!(
            "{get}{}",
            plain("POST", "Transfer-Encoding: chunked\r\n", CHUNKED_BODY)
        ),
        &["GET", "POST"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/get-then-garbage",
        format!("{get}GARBAGE\r\n\r\n"),
        &["GET", "GARBAGE"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/http10-then-http11",
        format!("GET $P HTTP/1.0\r\nHost: $H\r\nConnection: keep-alive\r\n\r\n{get_b}"),
        &["GET", "GET"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/absolute-then-origin",
        format!("GET http://$H$P HTTP/1.1\r\nHost: $H\r\n\r\n{get_b}"),
        &["GET", "GET"],
    ));
    v.push(Case::pipelined(
        "req/pipeline/dup-cl-then-get",
        format!(
            "{}{get_b}",
            plain(
                "POST",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "hello"
            )
        ),
        &["POST", "GET"],
    ));

    // Expect and Upgrade.
    v.push(Case::in_steps(
        "req/expect/100-continue-waits",
        vec![
            Step::Write(
                plain("POST", "Expect: 100-continue\r\nContent-Length: 5\r\n", "").into_bytes(),
            ),
            Step::Sleep(300),
            Step::Write(b"hello".to_vec()),
        ],
    ));
    v.push(Case::req(
        "req/expect/100-continue-body-at-once",
        plain(
            "POST",
            "Expect: 100-continue\r\nContent-Length: 5\r\n",
            "hello",
        ),
    ));
    v.push(Case::req(
        "req/expect/100-continue-no-body",
        plain("GET", "Expect: 100-continue\r\n", ""),
    ));
    v.push(Case::req(
        "req/expect/100-continue-cl0",
        plain("POST", "Expect: 100-continue\r\nContent-Length: 0\r\n", ""),
    ));
    v.push(Case::req(
        "req/expect/unknown",
        plain("POST", "Expect: 200-ok\r\nContent-Length: 5\r\n", "hello"),
    ));
    v.push(Case::req(
        "req/expect/http10",
        "POST $P HTTP/1.0\r\nHost: $H\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    ));
    let upgrades: &[(&str, &str)] = &[
        (
            "websocket-incomplete",
            "Upgrade: websocket\r\nConnection: Upgrade\r\n",
        ),
        (
            "websocket",
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
        (
            "h2c",
            "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n",
        ),
        ("without-connection", "Upgrade: websocket\r\n"),
        ("tls", "Upgrade: TLS/1.0\r\nConnection: Upgrade\r\n"),
    ];
    for (name, extra) in upgrades {
        v.push(Case::req(
            format!("req/upgrade/{name}"),
            plain("GET", extra, ""),
        ));
    }

    // Bodies.
    v.push(Case::req("req/body/post-no-length", plain("POST", "", "")));
    v.push(Case::req(
        "req/body/post-no-length-with-bytes",
        plain("POST", "", "hello"),
    ));
    for len in [4096, 65536] {
        v.push(Case::req(
            format!("req/body/post-{}k", len / 1024),
            plain(
                "POST",
                &format!("Content-Length: {len}\r\n"),
                &"b".repeat(len),
            ),
        ));
    }
    let binary: Vec<u8> = (0..=255u8).collect();
    let mut with_binary = plain("POST", "Content-Length: 256\r\n", "").into_bytes();
    with_binary.extend_from_slice(&binary);
    v.push(Case::req("req/body/binary", with_binary));
    v.push(Case::req(
        "req/body/chunked-4k",
        plain(
            "POST",
            "Transfer-Encoding: chunked\r\n",
            &format!("1000\r\n{}\r\n0\r\n\r\n", "c".repeat(4096)),
        ),
    ));
    v.push(Case::in_steps(
        "req/body/split-writes",
        vec![
            Step::Write(plain("POST", "Content-Length: 11\r\n", "hel").into_bytes()),
            Step::Sleep(50),
            Step::Write(b"lo wo".to_vec()),
            Step::Sleep(50),
            Step::Write(b"rld".to_vec()),
        ],
    ));
    v.push(Case::in_steps(
        "req/body/head-split-writes",
        vec![
            Step::Write(b"GET $P HTTP/1.1\r\nHo".to_vec()),
            Step::Sleep(50),
            Step::Write(b"st: $H\r\n\r\n".to_vec()),
        ],
    ));

    // Header oddities.
    let many = |n: usize| {
        (0..n)
            .map(|i| format!("X-H{i}: {i}\r\n"))
            .collect::<String>()
    };
    let odd: Vec<(&str, String)> = vec![
        ("space-before-colon", "X-Test : 1\r\n".into()),
        ("tab-before-colon", "X-Test\t: 1\r\n".into()),
        ("nul-in-value", "X-Test: a\x00b\r\n".into()),
        ("cr-in-value", "X-Test: a\rb\r\n".into()),
        ("del-in-value", "X-Test: a\x7fb\r\n".into()),
        ("obs-fold", "X-Folded: a\r\n b\r\n".into()),
        ("utf8-value", "X-Utf8: caf\u{e9}\r\n".into()),
        ("empty-value", "X-Empty:\r\n".into()),
        ("trailing-space-value", "X-Sp: a   \r\n".into()),
        ("name-with-space", "X Test: 1\r\n".into()),
        ("name-with-at", "X@Test: 1\r\n".into()),
        ("empty-name", ": x\r\n".into()),
        ("no-colon", "X-No-Colon\r\n".into()),
        ("many-100", many(100)),
        ("many-200", many(200)),
        (
            "long-value-8k",
            format!("X-Long: {}\r\n", "v".repeat(8_000)),
        ),
        (
            "long-value-20k",
            format!("X-Long: {}\r\n", "v".repeat(20_000)),
        ),
        (
            "long-value-40k",
            format!("X-Long: {}\r\n", "v".repeat(40_000)),
        ),
        ("accept-encoding-gzip", "Accept-Encoding: gzip\r\n".into()),
        (
            "accept-encoding-identity",
            "Accept-Encoding: identity\r\n".into(),
        ),
        ("request-id-own", "X-Request-Id: mine-123\r\n".into()),
        ("request-id-bad", "X-Request-Id: bad id\r\n".into()),
        (
            "request-id-two",
            "X-Request-Id: one-1\r\nX-Request-Id: two-2\r\n".into(),
        ),
        ("keep-alive", "Keep-Alive: timeout=5\r\n".into()),
        (
            "proxy-connection",
            "Proxy-Connection: keep-alive\r\n".into(),
        ),
        ("te-trailers", "TE: trailers\r\n".into()),
        ("trailer", "Trailer: X-T\r\n".into()),
        (
            "proxy-authorization",
            "Proxy-Authorization: Basic eDp5\r\n".into(),
        ),
    ];
    for (name, extra) in &odd {
        v.push(Case::req(
            format!("req/header/{name}"),
            plain("GET", extra, ""),
        ));
    }
    v.push(Case::req(
        "req/header/bare-lf",
        "GET $P HTTP/1.1\nHost: $H\n\n",
    ));
    v.push(Case::req(
        "req/header/bare-lf-mixed",
        "GET $P HTTP/1.1\r\nHost: $H\nX-A: 1\r\n\r\n",
    ));
    v.push(Case::req(
        "req/header/bare-cr",
        "GET $P HTTP/1.1\rHost: $H\r\r",
    ));
    v.push(Case::req(
        "req/header/first-line-folded",
        "GET $P HTTP/1.1\r\n X-Bad: 1\r\nHost: $H\r\n\r\n",
    ));
    v.push(Case::req(
        "req/header/leading-crlf",
        "\r\nGET $P HTTP/1.1\r\nHost: $H\r\n\r\n",
    ));
    v.push(Case::req(
        "req/header/two-leading-crlf",
        "\r\n\r\nGET $P HTTP/1.1\r\nHost: $H\r\n\r\n",
    ));

    // Forwarding headers a client must not be able to set (values carry "spoof").
    let forwarding: &[(&str, &str)] = &[
        (
            "forwarded",
            "Forwarded: for=\"spoof\";host=spoof.example;proto=https\r\n",
        ),
        ("x-forwarded-for", "X-Forwarded-For: spoof\r\n"),
        (
            "x-forwarded-for-two",
            "X-Forwarded-For: spoof\r\nX-Forwarded-For: spoof2\r\n",
        ),
        ("x-forwarded-host", "X-Forwarded-Host: spoof.example\r\n"),
        ("x-forwarded-proto", "X-Forwarded-Proto: spoof\r\n"),
        ("x-forwarded-port", "X-Forwarded-Port: 443spoof\r\n"),
        ("x-forwarded-prefix", "X-Forwarded-Prefix: /spoof\r\n"),
        ("x-real-ip", "X-Real-IP: spoof\r\n"),
        (
            "lowercase",
            "x-forwarded-for: spoof\r\nx-real-ip: spoof\r\n",
        ),
        (
            "all",
            "Forwarded: for=spoof\r\nX-Forwarded-For: spoof\r\nX-Forwarded-Host: spoof\r\nX-Forwarded-Proto: spoof\r\nX-Forwarded-Port: spoof\r\nX-Forwarded-Prefix: /spoof\r\nX-Real-IP: spoof\r\n",
        ),
    ];
    for (name, extra) in forwarding {
        v.push(Case::req(
            format!("req/forwarding/{name}"),
            plain("GET", extra, ""),
        ));
    }
    v.push(Case::req(
        "req/forwarding/x-forwarded-host-absolute-no-host",
        "GET http://$H$P HTTP/1.1\r\nX-Forwarded-Host: spoof.example\r\n\r\n",
    ));
    v.push(Case::req(
        "req/forwarding/x-forwarded-for-chunked",
        plain(
            "POST",
            "X-Forwarded-For: spoof\r\nX-Real-IP: spoof\r\nTransfer-Encoding: chunked\r\n",
            CHUNKED_BODY,
        ),
    ));
    v
}

fn answer_cases() -> Vec<Case> {
    let ok = |extra: &str, body: &str| format!("HTTP/1.1 200 OK\r\n{extra}\r\n{body}");
    let cl5 = ok("Content-Length: 5\r\n", "hello");
    let chunked = |body: &str| ok("Transfer-Encoding: chunked\r\n", body);
    let mut v = Vec::new();
    let mut a = |name: &str, method: &str, script: Vec<Act>| {
        v.push(Case::answer(format!("ans/{name}"), method, script));
    };

    // Framings.
    a("cl", "GET", vec![send(&cl5)]);
    a("chunked", "GET", vec![send(chunked(CHUNKED_BODY))]);
    a(
        "chunked-several",
        "GET",
        vec![send(chunked("2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"))],
    );
    a(
        "chunked-ext",
        "GET",
        vec![send(chunked("5;a=b\r\nhello\r\n0\r\n\r\n"))],
    );
    a(
        "chunked-trailers",
        "GET",
        vec![send(chunked("5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"))],
    );
    a(
        "chunked-in-pieces",
        "GET",
        vec![
            send(chunked("5\r\nhel")),
            Act::Sleep(50),
            send("lo\r\n0\r\n\r\n"),
        ],
    );
    a(
        "close-delimited",
        "GET",
        vec![send("HTTP/1.1 200 OK\r\n\r\nhello"), Act::Close],
    );
    a(
        "close-delimited-keep-alive-header",
        "GET",
        vec![
            send("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nhello"),
            Act::Close,
        ],
    );
    a(
        "http10-cl",
        "GET",
        vec![send("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")],
    );
    a(
        "http10-keep-alive",
        "GET",
        vec![send(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
        )],
    );
    a(
        "http10-close-delimited",
        "GET",
        vec![send("HTTP/1.0 200 OK\r\n\r\nhello"), Act::Close],
    );
    a(
        "cl-and-te",
        "GET",
        vec![send(ok(
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            CHUNKED_BODY,
        ))],
    );
    a(
        "te-and-cl",
        "GET",
        vec![send(ok(
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            CHUNKED_BODY,
        ))],
    );
    a(
        "cl-dup-same",
        "GET",
        vec![send(ok(
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "hello",
        ))],
    );
    a(
        "cl-dup-diff",
        "GET",
        vec![send(ok(
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "hello!",
        ))],
    );
    a(
        "cl-list-same",
        "GET",
        vec![send(ok("Content-Length: 5, 5\r\n", "hello"))],
    );
    a(
        "cl-plus",
        "GET",
        vec![send(ok("Content-Length: +5\r\n", "hello"))],
    );
    a(
        "cl-negative",
        "GET",
        vec![send(ok("Content-Length: -1\r\n", "hello")), Act::Close],
    );
    a(
        "cl-not-a-number",
        "GET",
        vec![send(ok("Content-Length: five\r\n", "hello")), Act::Close],
    );
    a(
        "cl-leading-zeros",
        "GET",
        vec![send(ok("Content-Length: 005\r\n", "hello"))],
    );
    a(
        "connection-content-length",
        "GET",
        vec![send(ok(
            "Content-Length: 5\r\nConnection: content-length\r\n",
            "hello",
        ))],
    );
    a(
        "connection-transfer-encoding",
        "GET",
        vec![send(ok(
            "Transfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n",
            CHUNKED_BODY,
        ))],
    );
    a(
        "te-gzip-and-cl",
        "GET",
        vec![send(ok(
            "Transfer-Encoding: gzip\r\nContent-Length: 5\r\n",
            "hello",
        ))],
    );
    a(
        "te-chunked-te-identity-cl",
        "GET",
        vec![send(ok(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n",
            "hello",
        ))],
    );
    a(
        "te-identity",
        "GET",
        vec![
            send(ok("Transfer-Encoding: identity\r\n", "hello")),
            Act::Close,
        ],
    );
    a(
        "te-gzip-chunked",
        "GET",
        vec![send(ok(
            "Transfer-Encoding: gzip, chunked\r\n",
            CHUNKED_BODY,
        ))],
    );
    a(
        "te-chunked-gzip",
        "GET",
        vec![
            send(ok("Transfer-Encoding: chunked, gzip\r\n", "hello")),
            Act::Close,
        ],
    );

    // Interim answers.
    a(
        "1xx-100",
        "GET",
        vec![send(format!("HTTP/1.1 100 Continue\r\n\r\n{cl5}"))],
    );
    a(
        "1xx-103",
        "GET",
        vec![send(format!(
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n{cl5}"
        ))],
    );
    a(
        "1xx-100-and-103",
        "GET",
        vec![send(format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n{cl5}"
        ))],
    );
    a(
        "1xx-then-close",
        "GET",
        vec![
            send("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"),
            Act::Close,
        ],
    );
    a(
        "101-unasked",
        "GET",
        vec![send(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        )],
    );

    // Bodiless statuses.
    a("204", "GET", vec![send("HTTP/1.1 204 No Content\r\n\r\n")]);
    a(
        "204-cl0",
        "GET",
        vec![send("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")],
    );
    v.push(
        Case::answer(
            "ans/204-cl5-with-body",
            "GET",
            vec![send(
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
            )],
        )
        .victims(),
    );
    v.push(
        Case::answer(
            "ans/204-cl5-stray-response-later",
            "GET",
            vec![
                send("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
                Act::Sleep(300),
                send(STRAY),
            ],
        )
        .victims(),
    );
    let mut a = |name: &str, method: &str, script: Vec<Act>| {
        v.push(Case::answer(format!("ans/{name}"), method, script));
    };
    a(
        "204-chunked",
        "GET",
        vec![send(
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
        )],
    );
    a(
        "304",
        "GET",
        vec![send("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")],
    );
    a(
        "304-cl5",
        "GET",
        vec![send(
            "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 5\r\n\r\n",
        )],
    );
    a(
        "head-cl",
        "HEAD",
        vec![send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")],
    );
    a(
        "head-chunked",
        "HEAD",
        vec![send(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        )],
    );
    a(
        "head-no-length",
        "HEAD",
        vec![send("HTTP/1.1 200 OK\r\n\r\n")],
    );
    a("post-cl", "POST", vec![send(&cl5)]);
    a(
        "post-100-continue",
        "POST",
        vec![send(format!("HTTP/1.1 100 Continue\r\n\r\n{cl5}"))],
    );
    a("post-chunked", "POST", vec![send(chunked(CHUNKED_BODY))]);
    a(
        "post-close-delimited",
        "POST",
        vec![send("HTTP/1.1 200 OK\r\n\r\nhello"), Act::Close],
    );

    // Lenient chunk sizes.
    for (name, body) in [
        (
            "chunk-size-cr-inside",
            "1\r2\r\nabcdefghijklmnopqr\r\n0\r\n\r\n",
        ),
        ("chunk-size-0x", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-leading-space", " 5\r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-trailing-space", "5 \r\nhello\r\n0\r\n\r\n"),
        ("chunk-size-plus", "+5\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk-size-overflow",
            "fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk-bare-lf", "5\nhello\n0\n\n"),
        ("chunk-data-no-crlf", "5\r\nhelloXX0\r\n\r\n"),
        ("chunk-size-empty", "\r\nhello\r\n0\r\n\r\n"),
    ] {
        a(name, "GET", vec![send(chunked(body)), Act::Close]);
    }

    // Odd heads.
    a(
        "hop-by-hop-headers",
        "GET",
        vec![send(ok(
            "Content-Length: 5\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: X-T\r\nConnection: keep-alive, X-Custom\r\nX-Custom: 1\r\nX-Kept: 1\r\n",
            "hello",
        ))],
    );
    a(
        "large-head-40k",
        "GET",
        vec![send(ok(
            &format!("Content-Length: 5\r\nX-Big: {}\r\n", "a".repeat(40_000)),
            "hello",
        ))],
    );
    a(
        "large-head-70k",
        "GET",
        vec![send(ok(
            &format!("Content-Length: 5\r\nX-Big: {}\r\n", "a".repeat(70_000)),
            "hello",
        ))],
    );
    a(
        "many-headers-200",
        "GET",
        vec![send(ok(
            &format!(
                "Content-Length: 5\r\n{}",
                (0..200)
                    .map(|i| format!("X-H{i}: {i}\r\n"))
                    .collect::<String>()
            ),
            "hello",
        ))],
    );
    a(
        "request-id-from-upstream",
        "GET",
        vec![send(ok(
            "X-Request-Id: upstream-id\r\nContent-Length: 5\r\n",
            "hello",
        ))],
    );
    a(
        "security-headers-set",
        "GET",
        vec![send(ok(
            "X-Frame-Options: SAMEORIGIN\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nContent-Length: 5\r\n",
            "hello",
        ))],
    );
    a(
        "set-cookie-twice",
        "GET",
        vec![send(ok(
            "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\n",
            "hello",
        ))],
    );
    a(
        "text-html",
        "GET",
        vec![send(ok(
            "Content-Type: text/html\r\nContent-Length: 5\r\n",
            "hello",
        ))],
    );
    a(
        "event-stream",
        "GET",
        vec![send(ok(
            "Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n",
            "9\r\ndata: x\n\n\r\n0\r\n\r\n",
        ))],
    );
    a(
        "obs-fold",
        "GET",
        vec![send(ok(
            "X-Folded: a\r\n b\r\nContent-Length: 5\r\n",
            "hello",
        ))],
    );
    a(
        "nul-in-header",
        "GET",
        vec![send(ok("X-Nul: a\x00b\r\nContent-Length: 5\r\n", "hello"))],
    );
    a(
        "space-before-colon",
        "GET",
        vec![send(ok("Content-Length : 5\r\n", "hello")), Act::Close],
    );
    a(
        "header-without-colon",
        "GET",
        vec![send(ok("X-No-Colon\r\nContent-Length: 5\r\n", "hello"))],
    );
    a(
        "bare-lf-head",
        "GET",
        vec![send("HTTP/1.1 200 OK\nContent-Length: 5\n\nhello")],
    );

    // Invalid status lines.
    for (name, line) in [
        ("status-letters", "HTTP/1.1 2OO OK"),
        ("status-no-reason", "HTTP/1.1 200"),
        ("status-999", "HTTP/1.1 999 Weird"),
        ("status-099", "HTTP/1.1 099 Low"),
        ("status-icy", "ICY 200 OK"),
        ("status-http2", "HTTP/2 200 OK"),
        ("status-http12", "HTTP/1.2 200 OK"),
    ] {
        a(
            name,
            "GET",
            vec![send(format!("{line}\r\nContent-Length: 5\r\n\r\nhello"))],
        );
    }
    a(
        "garbage",
        "GET",
        vec![send("hello world\r\n\r\n"), Act::Close],
    );
    a("empty-close", "GET", vec![Act::Close]);

    // Early closes and delays.
    a(
        "close-mid-body",
        "GET",
        vec![send(ok("Content-Length: 10\r\n", "hello")), Act::Close],
    );
    a(
        "close-mid-chunk",
        "GET",
        vec![send(chunked("5\r\nhe")), Act::Close],
    );
    a(
        "close-mid-head",
        "GET",
        vec![send("HTTP/1.1 200 OK\r\nContent-Len"), Act::Close],
    );
    a("slow-head", "GET", vec![Act::Sleep(300), send(&cl5)]);
    a("close-after-answer", "GET", vec![send(&cl5), Act::Close]);
    a(
        "connection-close",
        "GET",
        vec![
            send(ok("Connection: close\r\nContent-Length: 5\r\n", "hello")),
            Act::Close,
        ],
    );

    // Stray bytes after a complete answer.
    let mut s = |name: &str, method: &str, script: Vec<Act>| {
        v.push(Case::answer(format!("ans/{name}"), method, script).victims());
    };
    s(
        "stray-bytes-after-cl",
        "GET",
        vec![send(format!("{cl5}JUNK"))],
    );
    s(
        "stray-response-same-write",
        "GET",
        vec![send(format!("{cl5}{STRAY}"))],
    );
    s(
        "stray-response-later",
        "GET",
        vec![send(&cl5), Act::Sleep(300), send(STRAY)],
    );
    s(
        "stray-response-later-after-chunked",
        "GET",
        vec![send(chunked(CHUNKED_BODY)), Act::Sleep(300), send(STRAY)],
    );
    s(
        "answer-twice",
        "GET",
        vec![send(&cl5), Act::Sleep(50), send(&cl5)],
    );
    s(
        "304-with-body",
        "GET",
        vec![send(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
        )],
    );
    s(
        "head-body-sent-anyway",
        "HEAD",
        vec![send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")],
    );
    s(
        "head-stray-response-later",
        "HEAD",
        vec![
            send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Act::Sleep(300),
            send(STRAY),
        ],
    );
    s(
        "post-204-cl5-stray-response-later",
        "POST",
        vec![
            send("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            Act::Sleep(300),
            send(STRAY),
        ],
    );
    s(
        "1xx-stray-later",
        "GET",
        vec![
            send(format!("HTTP/1.1 103 Early Hints\r\n\r\n{cl5}")),
            Act::Sleep(300),
            send("HTTP/1.1 103 Early Hints\r\n\r\n"),
            send(STRAY),
        ],
    );
    v
}

// ---------------------------------------------------------------------------------------------
// Compression cases.
// ---------------------------------------------------------------------------------------------

/// `n` bytes of compressible text. It says `hello` (a marker: an upstream 4xx/5xx with it is
/// not taken for a page the edge made) and none of the words that mark another request's
/// answer (see [`has_marker`]).
fn text(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n + 80);
    let mut i = 0;
    while s.len() < n {
        let _ = writeln!(
            s,
            "line {i:05}: hello from a compressible answer, lorem ipsum dolor sit amet"
        );
        i += 1;
    }
    s.truncate(n);
    s.into_bytes()
}

/// `n` bytes that do not compress (a PNG signature, then noise).
fn noise(n: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 24) as u8);
    }
    out.truncate(n);
    out
}

/// An answer: `HTTP/1.1 <status>`, `extra` header lines (each ending in CRLF), a Content-Length
/// for `body`, and `body`.
fn with_cl(status: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// An answer with `Transfer-Encoding: chunked` and `framed` (a chunked body as it goes out).
fn with_te(status: &str, extra: &str, framed: &[u8]) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 {status}\r\n{extra}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    out.extend_from_slice(framed);
    out
}

/// `body` as chunks of `size` bytes, each size followed by `ext`, then the last chunk with
/// `trailers` (header lines ending in CRLF).
fn chunks_of(body: &[u8], size: usize, ext: &str, trailers: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
    out
}

/// `bytes` in `n` writes `gap` ms apart (so that the edge reads them in several reads).
fn in_writes(bytes: &[u8], n: usize, gap: u64) -> Vec<Act> {
    let size = bytes.len().div_ceil(n).max(1);
    let mut acts = Vec::new();
    for (i, piece) in bytes.chunks(size).enumerate() {
        if i > 0 {
            acts.push(Act::Sleep(gap));
        }
        acts.push(send(piece));
    }
    acts
}

fn gzipped(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

fn brotlied(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
    e.write_all(body).expect("brotli into memory");
    e.into_inner()
}

/// The app of the `off` cases: `compression: false`.
const COMPRESSION_OFF: &str = "    compression: false\n";

/// A case of the compression cases: `request` (a template) answered by `script`.
fn exchange(name: String, kind: Kind, request: &str, script: Vec<Act>) -> Case {
    let mut c = Case::answer(name, "GET", script);
    c.kind = kind;
    c.methods = vec![method_of(request.as_bytes())];
    c.steps = vec![Step::Write(request.as_bytes().to_vec())];
    c
}

/// What a client accepts, as `Accept-Encoding` lines: each compared on a compressible answer
/// (`gz/req/…`), and a few on an app with `compression: false` (`gz/req/off-…`).
const ACCEPT_ENCODINGS: &[(&str, &str)] = &[
    ("absent", ""),
    ("gzip", "Accept-Encoding: gzip\r\n"),
    ("br", "Accept-Encoding: br\r\n"),
    ("zstd", "Accept-Encoding: zstd\r\n"),
    ("browser", "Accept-Encoding: gzip, deflate, br, zstd\r\n"),
    (
        "q-gzip-over-br",
        "Accept-Encoding: br;q=0.5, gzip;q=0.8\r\n",
    ),
    ("q-tie", "Accept-Encoding: gzip;q=0.5, zstd;q=0.5\r\n"),
    (
        "q-thousandths",
        "Accept-Encoding: zstd;q=1.0, br;q=0.999\r\n",
    ),
    ("q-lowest", "Accept-Encoding: gzip;q=0.001\r\n"),
    ("q0-gzip", "Accept-Encoding: gzip;q=0\r\n"),
    (
        "q0-all",
        "Accept-Encoding: br;q=0, gzip;q=0, zstd;q=0.000\r\n",
    ),
    ("q0-br-star", "Accept-Encoding: *;q=0.1, br;q=0\r\n"),
    ("star", "Accept-Encoding: *\r\n"),
    ("star-q0", "Accept-Encoding: *;q=0\r\n"),
    ("gzip-star-q0", "Accept-Encoding: gzip, *;q=0\r\n"),
    ("identity", "Accept-Encoding: identity\r\n"),
    ("identity-q0", "Accept-Encoding: identity;q=0\r\n"),
    (
        "gzip-identity-q0",
        "Accept-Encoding: gzip, identity;q=0\r\n",
    ),
    ("empty", "Accept-Encoding: \r\n"),
    ("deflate-only", "Accept-Encoding: deflate\r\n"),
    ("x-gzip", "Accept-Encoding: x-gzip\r\n"),
    ("uppercase", "Accept-Encoding: GZIP, BR\r\n"),
    ("q-uppercase", "Accept-Encoding: gzip;Q=0.5, br;q=0.4\r\n"),
    ("q-spaces", "Accept-Encoding: gzip ; q=0.5 , br ; q=0.4\r\n"),
    ("unknown-param", "Accept-Encoding: gzip;level=9\r\n"),
    ("malformed-q-over-1", "Accept-Encoding: gzip;q=2\r\n"),
    ("malformed-q-text", "Accept-Encoding: gzip;q=abc\r\n"),
    ("malformed-q-empty", "Accept-Encoding: gzip;q=\r\n"),
    (
        "malformed-q-four-digits",
        "Accept-Encoding: br;q=0.5555, gzip\r\n",
    ),
    ("malformed-q-negative", "Accept-Encoding: gzip;q=-1\r\n"),
    ("malformed-list", "Accept-Encoding: ,, gzip ,,\r\n"),
    ("non-ascii", "Accept-Encoding: gzip, caf\u{e9}\r\n"),
    (
        "two-headers",
        "Accept-Encoding: identity\r\nAccept-Encoding: gzip\r\n",
    ),
];

/// The variants also sent to the app with `compression: false`.
const ACCEPT_ON_OFF_APP: &[&str] = &["absent", "gzip", "browser", "star"];

/// The request of the answer-side compression cases.
const GET_GZIP: &str = "GET $P HTTP/1.1\r\nHost: $H\r\nAccept-Encoding: gzip\r\n\r\n";
const HEAD_GZIP: &str = "HEAD $P HTTP/1.1\r\nHost: $H\r\nAccept-Encoding: gzip\r\n\r\n";

fn compression_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let html = "Content-Type: text/html\r\n";
    let t2k = text(2000);
    let t70k = text(70_000);
    let html_2k = with_cl("200 OK", html, &t2k);

    // The client's side: what it accepts, on a compressible answer.
    for (name, lines) in ACCEPT_ENCODINGS {
        let request = plain("GET", lines, "");
        v.push(exchange(
            format!("gz/req/{name}"),
            Kind::Request,
            &request,
            vec![send(&html_2k)],
        ));
        if ACCEPT_ON_OFF_APP.contains(name) {
            v.push(
                exchange(
                    format!("gz/req/off-{name}"),
                    Kind::Request,
                    &request,
                    vec![send(&html_2k)],
                )
                .yaml(COMPRESSION_OFF),
            );
        }
    }
    // Each coding over several reads, and cut short by the upstream.
    let html_70k = with_cl("200 OK", html, &t70k);
    for coding in ["gzip", "br", "zstd"] {
        let request = plain("GET", &format!("Accept-Encoding: {coding}\r\n"), "");
        v.push(exchange(
            format!("gz/req/{coding}-70k-in-reads"),
            Kind::Request,
            &request,
            in_writes(&html_70k, 6, 20),
        ));
        let mut cut = in_writes(&html_70k[..html_70k.len() - 40_000], 2, 20);
        cut.push(Act::Close);
        v.push(exchange(
            format!("gz/req/{coding}-close-mid-body"),
            Kind::Request,
            &request,
            cut,
        ));
    }
    let mut pair = exchange(
        "gz/req/pipelined-gzip-br".into(),
        Kind::Request,
        &format!(
            "{}{}",
            plain("GET", "Accept-Encoding: gzip\r\n", ""),
            plain("GET", "Accept-Encoding: br\r\n", "")
        ),
        vec![send(&html_2k)],
    );
    pair.methods = vec!["GET".into(), "GET".into()];
    v.push(pair);
    v.push(exchange(
        "gz/req/post-gzip".into(),
        Kind::Request,
        &plain(
            "POST",
            "Accept-Encoding: gzip\r\nContent-Length: 5\r\n",
            "hello",
        ),
        vec![send(&html_2k)],
    ));
    v.push(exchange(
        "gz/req/http10-gzip".into(),
        Kind::Request,
        "GET $P HTTP/1.0\r\nHost: $H\r\nAccept-Encoding: gzip\r\n\r\n",
        vec![send(&html_2k)],
    ));
    v.push(exchange(
        "gz/req/connection-close-gzip".into(),
        Kind::Request,
        &plain("GET", "Accept-Encoding: gzip\r\nConnection: close\r\n", ""),
        vec![send(&html_2k)],
    ));

    // The upstream's side, to `Accept-Encoding: gzip`.
    let mut a = |name: &str, request: &str, script: Vec<Act>| {
        v.push(exchange(
            format!("gz/ans/{name}"),
            Kind::Answer,
            request,
            script,
        ));
    };
    let ok_cl = |extra: &str, body: &[u8]| with_cl("200 OK", extra, body);
    let ok_te = |extra: &str, framed: &[u8]| with_te("200 OK", extra, framed);

    // Content types.
    for (name, ctype, body) in [
        ("type-html", "text/html", &t2k),
        ("type-html-charset", "text/html; charset=utf-8", &t2k),
        ("type-html-uppercase", "TEXT/HTML", &t2k),
        ("type-json", "application/json", &t2k),
        ("type-problem-json", "application/problem+json", &t2k),
        ("type-svg", "image/svg+xml", &t2k),
        ("type-png", "image/png", &noise(2000)),
        ("type-octet-stream", "application/octet-stream", &t2k),
    ] {
        a(
            name,
            GET_GZIP,
            vec![send(ok_cl(&format!("Content-Type: {ctype}\r\n"), body))],
        );
    }
    a("type-none", GET_GZIP, vec![send(ok_cl("", &t2k))]);
    let events: Vec<u8> = (0..20)
        .flat_map(|i| format!("data: hello event {i:03} lorem ipsum\n\n").into_bytes())
        .collect();
    a(
        "type-event-stream",
        GET_GZIP,
        vec![send(ok_te(
            "Content-Type: text/event-stream\r\n",
            &chunks_of(&events, 100, "", ""),
        ))],
    );
    a(
        "type-event-stream-charset",
        GET_GZIP,
        vec![send(ok_te(
            "Content-Type: text/event-stream; charset=utf-8\r\n",
            &chunks_of(&events, 100, "", ""),
        ))],
    );
    a(
        "type-two-png-then-html",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: image/png\r\nContent-Type: text/html\r\n",
            &t2k,
        ))],
    );
    a(
        "type-two-html-then-png",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Type: image/png\r\n",
            &t2k,
        ))],
    );

    // Sizes: tiny (under compress::MIN_LENGTH = 256) and large, in one read or several.
    for n in [0, 100, 255, 256] {
        a(
            &format!("size-cl-{n}"),
            GET_GZIP,
            vec![send(ok_cl(html, &text(n)))],
        );
    }
    a(
        "size-chunked-100",
        GET_GZIP,
        vec![send(ok_te(html, &chunks_of(&text(100), 100, "", "")))],
    );
    a(
        "size-chunked-empty",
        GET_GZIP,
        vec![send(ok_te(html, b"0\r\n\r\n"))],
    );
    a(
        "size-cl-70k-one-write",
        GET_GZIP,
        vec![send(ok_cl(html, &t70k))],
    );
    a(
        "size-cl-70k-in-reads",
        GET_GZIP,
        in_writes(&ok_cl(html, &t70k), 6, 20),
    );
    a(
        "size-chunked-70k-in-reads",
        GET_GZIP,
        in_writes(&ok_te(html, &chunks_of(&t70k, 8000, "", "")), 6, 20),
    );
    a(
        "size-json-chunked-70k",
        GET_GZIP,
        vec![send(ok_te(
            "Content-Type: application/json\r\n",
            &chunks_of(&t70k, 16_384, "", ""),
        ))],
    );

    // Framings.
    a(
        "chunked-several",
        GET_GZIP,
        vec![send(ok_te(html, &chunks_of(&t2k, 100, "", "")))],
    );
    a(
        "chunked-trailers",
        GET_GZIP,
        vec![send(ok_te(
            html,
            &chunks_of(&t2k, 700, "", "X-Trailer: 1\r\nX-Other: 2\r\n"),
        ))],
    );
    a(
        "chunked-extensions",
        GET_GZIP,
        vec![send(ok_te(
            html,
            &chunks_of(&t2k, 700, ";a=b;c=\"d e\"", ""),
        ))],
    );
    let trailed = ok_te(html, &chunks_of(&t2k, 700, "", "X-Trailer: 1\r\n"));
    a(
        "chunked-trailers-split",
        GET_GZIP,
        vec![
            send(&trailed[..trailed.len() - 8]),
            Act::Sleep(30),
            send(&trailed[trailed.len() - 8..]),
        ],
    );
    a(
        "chunked-in-pieces",
        GET_GZIP,
        in_writes(&ok_te(html, &chunks_of(&t2k, 300, "", "")), 7, 30),
    );
    a(
        "close-delimited",
        GET_GZIP,
        vec![send(with_head("HTTP/1.1 200 OK", html, &t2k)), Act::Close],
    );
    let mut cut = in_writes(&with_head("HTTP/1.1 200 OK", html, &t70k), 5, 20);
    cut.push(Act::Close);
    a("close-delimited-70k-in-reads", GET_GZIP, cut);
    a(
        "http10-cl",
        GET_GZIP,
        vec![send(
            [b"HTTP/1.0".as_slice(), &ok_cl(html, &t2k)[8..]].concat(),
        )],
    );
    a(
        "http10-close-delimited",
        GET_GZIP,
        vec![send(with_head("HTTP/1.0 200 OK", html, &t2k)), Act::Close],
    );
    a(
        "connection-close",
        GET_GZIP,
        vec![
            send(ok_cl(
                "Content-Type: text/html\r\nConnection: close\r\n",
                &t2k,
            )),
            Act::Close,
        ],
    );

    // Already encoded, or not to be transformed.
    let gz = gzipped(&t2k);
    a(
        "encoded-gzip",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Encoding: gzip\r\n",
            &gz,
        ))],
    );
    a(
        "encoded-gzip-chunked",
        GET_GZIP,
        vec![send(ok_te(
            "Content-Type: text/html\r\nContent-Encoding: gzip\r\n",
            &chunks_of(&gz, 200, "", ""),
        ))],
    );
    a(
        "encoded-br-to-gzip-client",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Encoding: br\r\n",
            &brotlied(&t2k),
        ))],
    );
    a(
        "encoded-identity",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Encoding: identity\r\n",
            &t2k,
        ))],
    );
    a(
        "encoded-identity-chunked",
        GET_GZIP,
        vec![send(ok_te(
            "Content-Type: text/html\r\nContent-Encoding: identity\r\n",
            &chunks_of(&t2k, 700, "", ""),
        ))],
    );
    // Content-Encoding is a list (RFC 9110 §8.4): its field lines are one list, in order. The
    // content is over compress::MIN_LENGTH once encoded, so that a path that missed the coding
    // would compress it.
    let gz = gzipped(&noise(2000));
    a(
        "encoded-gzip-large",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Encoding: gzip\r\n",
            &gz,
        ))],
    );
    a(
        "encoded-identity-then-gzip",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\n",
            &gz,
        ))],
    );
    a(
        "encoded-gzip-then-identity",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Encoding: identity\r\n",
            &gz,
        ))],
    );
    a(
        "encoded-empty-value",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Encoding: \r\n",
            &t2k,
        ))],
    );
    for (name, lines) in [
        ("no-transform", "Cache-Control: no-transform\r\n"),
        (
            "no-transform-in-list",
            "Cache-Control: public, No-Transform, max-age=60\r\n",
        ),
        (
            "no-transform-second-header",
            "Cache-Control: public\r\nCache-Control: no-transform\r\n",
        ),
        ("cache-control-other", "Cache-Control: max-age=60\r\n"),
    ] {
        a(
            name,
            GET_GZIP,
            vec![send(ok_cl(&format!("{html}{lines}"), &t2k))],
        );
    }

    // Statuses, ranges, HEAD.
    a(
        "206-content-range",
        GET_GZIP,
        vec![send(with_cl(
            "206 Partial Content",
            "Content-Type: text/html\r\nContent-Range: bytes 0-1999/5000\r\n",
            &t2k,
        ))],
    );
    a(
        "200-content-range",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nContent-Range: bytes 0-1999/2000\r\n",
            &t2k,
        ))],
    );
    a(
        "206-no-content-range",
        GET_GZIP,
        vec![send(with_cl("206 Partial Content", html, &t2k))],
    );
    a(
        "204-html",
        GET_GZIP,
        vec![send(
            "HTTP/1.1 204 No Content\r\nContent-Type: text/html\r\n\r\n",
        )],
    );
    a(
        "304-html-etag",
        GET_GZIP,
        vec![send(
            "HTTP/1.1 304 Not Modified\r\nContent-Type: text/html\r\nETag: \"v1\"\r\n\r\n",
        )],
    );
    a(
        "201-json",
        GET_GZIP,
        vec![send(with_cl(
            "201 Created",
            "Content-Type: application/json\r\n",
            &t2k,
        ))],
    );
    a(
        "404-html",
        GET_GZIP,
        vec![send(with_cl("404 Not Found", html, &t2k))],
    );
    a(
        "500-json",
        GET_GZIP,
        vec![send(with_cl(
            "500 Internal Server Error",
            "Content-Type: application/json\r\n",
            &t2k,
        ))],
    );
    a(
        "head-cl",
        HEAD_GZIP,
        vec![send(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2000\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\n\r\n",
        )],
    );
    a(
        "head-chunked",
        HEAD_GZIP,
        vec![send(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n",
        )],
    );

    // Validators and Vary.
    for (name, lines, body) in [
        ("etag-strong", "ETag: \"v1\"\r\n", &t2k),
        ("etag-weak", "ETag: W/\"v1\"\r\n", &t2k),
        ("etag-strong-tiny", "ETag: \"v1\"\r\n", &text(100)),
        ("accept-ranges", "Accept-Ranges: bytes\r\n", &t2k),
        ("accept-ranges-tiny", "Accept-Ranges: bytes\r\n", &text(100)),
        ("vary-cookie", "Vary: Cookie\r\n", &t2k),
        ("vary-accept-encoding", "Vary: Accept-Encoding\r\n", &t2k),
        ("vary-star", "Vary: *\r\n", &t2k),
        ("vary-list", "Vary: Cookie, accept-encoding\r\n", &t2k),
        ("vary-two-headers", "Vary: Cookie\r\nVary: Origin\r\n", &t2k),
        ("vary-cookie-tiny", "Vary: Cookie\r\n", &text(100)),
    ] {
        a(
            name,
            GET_GZIP,
            vec![send(ok_cl(&format!("{html}{lines}"), body))],
        );
    }
    a(
        "vary-cookie-png",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: image/png\r\nVary: Cookie\r\n",
            &noise(2000),
        ))],
    );
    a(
        "etag-strong-chunked",
        GET_GZIP,
        vec![send(ok_te(
            "Content-Type: text/html\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\n",
            &chunks_of(&t2k, 700, "", ""),
        ))],
    );

    // Interim answers first.
    a(
        "1xx-103",
        GET_GZIP,
        vec![send(
            [
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".as_slice(),
                &html_2k,
            ]
            .concat(),
        )],
    );
    a(
        "1xx-100-chunked",
        GET_GZIP,
        vec![send(
            [
                b"HTTP/1.1 100 Continue\r\n\r\n".as_slice(),
                &ok_te(html, &chunks_of(&t2k, 700, "", "")),
            ]
            .concat(),
        )],
    );

    // Malformed chunk framing, and upstreams that stop mid-answer.
    let good = chunks_of(&text(300), 300, "", "");
    let good = &good[..good.len() - 5]; // without the last chunk
    for (name, bad) in [
        (
            "bad-chunk-size-first",
            b"zz\r\nhello\r\n0\r\n\r\n".as_slice(),
        ),
        ("bad-chunk-size-after-good", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("bad-chunk-data-no-crlf", b"5\r\nhelloXX0\r\n\r\n"),
        ("bad-chunk-size-empty", b"\r\nhello\r\n0\r\n\r\n"),
        ("bad-chunk-size-bare-lf", b"5\nhello\n0\n\n"),
    ] {
        let body = if name == "bad-chunk-size-first" {
            bad.to_vec()
        } else {
            [good, bad].concat()
        };
        a(name, GET_GZIP, vec![send(ok_te(html, &body)), Act::Close]);
    }
    a(
        "bad-chunk-size-in-later-read",
        GET_GZIP,
        vec![
            send(ok_te(html, good)),
            Act::Sleep(50),
            send("zz\r\nhello\r\n0\r\n\r\n"),
            Act::Close,
        ],
    );
    let head_70k = ok_cl(html, &t70k);
    let mut cut = in_writes(&head_70k[..head_70k.len() - 40_000], 2, 20);
    cut.push(Act::Close);
    a("close-mid-body-cl", GET_GZIP, cut);
    let chunked_70k = ok_te(html, &chunks_of(&t70k, 8000, "", ""));
    a(
        "close-mid-chunk",
        GET_GZIP,
        vec![send(&chunked_70k[..20_000]), Act::Close],
    );
    let no_last = ok_te(html, &chunks_of(&t2k, 700, "", ""));
    a(
        "close-before-last-chunk",
        GET_GZIP,
        vec![send(&no_last[..no_last.len() - 5]), Act::Close],
    );
    a(
        "close-after-head",
        GET_GZIP,
        vec![send(&html_2k[..html_2k.len() - 2000]), Act::Close],
    );

    // Stray bytes after an answer the edge compresses: victims must get their own answers.
    let mut s = |name: &str, request: &str, script: Vec<Act>| {
        v.push(exchange(format!("gz/ans/{name}"), Kind::Answer, request, script).victims());
    };
    s(
        "stray-bytes-after-cl",
        GET_GZIP,
        vec![send([html_2k.as_slice(), b"JUNK"].concat())],
    );
    s(
        "stray-response-same-write",
        GET_GZIP,
        vec![send([html_2k.as_slice(), STRAY.as_bytes()].concat())],
    );
    s(
        "stray-response-later",
        GET_GZIP,
        vec![send(&html_2k), Act::Sleep(300), send(STRAY)],
    );
    s(
        "stray-response-later-after-chunked",
        GET_GZIP,
        vec![
            send(ok_te(html, &chunks_of(&t2k, 700, "", ""))),
            Act::Sleep(300),
            send(STRAY),
        ],
    );
    s(
        "stray-response-after-chunked-same-write",
        GET_GZIP,
        vec![send(
            [
                ok_te(html, &chunks_of(&t2k, 700, "", "")).as_slice(),
                STRAY.as_bytes(),
            ]
            .concat(),
        )],
    );
    let mut big = in_writes(&[head_70k.as_slice(), STRAY.as_bytes()].concat(), 4, 20);
    big.push(Act::Sleep(50));
    s("stray-response-after-70k-in-reads", GET_GZIP, big);
    s("stray-body-after-head", HEAD_GZIP, vec![send(&html_2k)]);

    // The app with `compression: false`.
    let mut off = |name: &str, request: &str, script: Vec<Act>| {
        v.push(
            exchange(format!("gz/off/{name}"), Kind::Answer, request, script).yaml(COMPRESSION_OFF),
        );
    };
    off("html-cl", GET_GZIP, vec![send(&html_2k)]);
    off(
        "html-chunked",
        GET_GZIP,
        vec![send(ok_te(html, &chunks_of(&t2k, 700, "", "")))],
    );
    off(
        "etag-accept-ranges-vary-cookie",
        GET_GZIP,
        vec![send(ok_cl(
            "Content-Type: text/html\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\nVary: Cookie\r\n",
            &t2k,
        ))],
    );
    off(
        "head-cl",
        HEAD_GZIP,
        vec![send(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2000\r\n\r\n",
        )],
    );
    off(
        "close-delimited",
        GET_GZIP,
        vec![send(with_head("HTTP/1.1 200 OK", html, &t2k)), Act::Close],
    );
    v
}

/// `status_line`, `extra` header lines, no framing, then `body` (close-delimited).
fn with_head(status_line: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{status_line}\r\n{extra}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 cases.
// ---------------------------------------------------------------------------------------------

/// What an HTTP/2 client does. Field names and values, and DATA, are templates (as in
/// [`Step`]); stream ids are the client's own (odd).
#[derive(Debug, Clone)]
enum H2Step {
    /// A field block: a request's head (the first on its stream) or its trailers.
    Headers(u32, Fields, bool),
    Data(u32, Vec<u8>, bool),
    Rst(u32, u32),
    /// Hand-made frames, sent as they are (not filled in).
    Raw(Vec<u8>),
    /// Waits (reading whatever arrives meanwhile).
    Sleep(u64),
}

/// RST_STREAM's CANCEL, as a browser sends it.
const CANCEL: u32 = 0x8;

fn field(name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.as_bytes().to_vec())
}

/// A request head: `:method`, `:scheme http`, `:authority $H`, `:path $P`, then `extra`.
fn h2_head(method: &str, extra: &[(&str, &str)]) -> Fields {
    let mut f = vec![
        field(":method", method),
        field(":scheme", "http"),
        field(":authority", "$H"),
        field(":path", "$P"),
    ];
    f.extend(extra.iter().map(|(n, v)| field(n, v)));
    f
}

/// `head` with pseudo-fields changed: `(name, Some(value))` replaces (or adds), `None` removes.
fn with_pseudo(mut head: Fields, changes: &[(&str, Option<&str>)]) -> Fields {
    for (name, value) in changes {
        let at = head.iter().position(|(n, _)| n == name.as_bytes());
        match (at, value) {
            (Some(i), Some(v)) => head[i].1 = v.as_bytes().to_vec(),
            (Some(i), None) => {
                head.remove(i);
            }
            (None, Some(v)) => {
                let first_regular = head
                    .iter()
                    .position(|(n, _)| !n.starts_with(b":"))
                    .unwrap_or(head.len());
                head.insert(first_regular, field(name, v));
            }
            (None, None) => {}
        }
    }
    head
}

fn h2_get(extra: &[(&str, &str)]) -> Vec<H2Step> {
    vec![H2Step::Headers(1, h2_head("GET", extra), true)]
}

/// A request with `body` in one DATA frame (none when empty: END_STREAM on the head).
fn h2_with_body(method: &str, extra: &[(&str, &str)], body: &[u8]) -> Vec<H2Step> {
    if body.is_empty() {
        return vec![H2Step::Headers(1, h2_head(method, extra), true)];
    }
    vec![
        H2Step::Headers(1, h2_head(method, extra), false),
        H2Step::Data(1, body.to_vec(), true),
    ]
}

impl Case {
    /// An HTTP/2 case: `steps` on one connection; the upstream answers each request with the
    /// target it saw ([`Act::Echo`]).
    fn h2(name: impl Into<String>, steps: Vec<H2Step>) -> Case {
        let mut methods = Vec::new();
        let mut seen = Vec::new();
        for step in &steps {
            if let H2Step::Headers(id, fields, _) = step
                && !seen.contains(id)
            {
                seen.push(*id);
                methods.push(
                    fields
                        .iter()
                        .find(|(n, _)| n == b":method")
                        .map_or("GET".to_string(), |(_, v)| lossy(v)),
                );
            }
        }
        Case {
            name: name.into(),
            kind: Kind::Request,
            steps: Vec::new(),
            methods,
            script: Some(vec![Act::Echo]),
            settle: 0,
            victims: 0,
            yaml: "",
            h2: Some(steps),
            cut: false,
            aborted: false,
        }
    }

    /// An HTTP/2 case whose upstream answers with `script`.
    fn h2_answer(name: impl Into<String>, steps: Vec<H2Step>, script: Vec<Act>) -> Case {
        let mut c = Case::h2(name, steps);
        c.kind = Kind::Answer;
        c.settle = settle_for(&script);
        c.script = Some(script);
        c.cut = answer_cut(&c);
        c
    }
}

fn settle_for(script: &[Act]) -> u64 {
    let sleeps = script
        .iter()
        .map(|a| match a {
            Act::Sleep(ms) => *ms,
            _ => 0,
        })
        .sum::<u64>();
    if sleeps > 0 { sleeps + 150 } else { 0 }
}

/// Whether a case's scripted answer is cut short by the upstream's close, or has chunk framing
/// that does not parse (read as leniently as the recording upstream reads requests): no front
/// end may pass it on as a whole answer.
fn answer_cut(c: &Case) -> bool {
    let Some(script) = &c.script else {
        return false;
    };
    if !script.iter().any(|a| matches!(a, Act::Close)) {
        return false;
    }
    let bytes: Vec<u8> = script
        .iter()
        .filter_map(|a| match a {
            Act::Send(b) => Some(b.as_slice()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat();
    let mut rest = &bytes[..];
    loop {
        let Some(len) = head_end(rest) else {
            return false; // no final head: the edge answers with its own page
        };
        let (line, headers) = header_lines(&rest[..len]);
        let status: u16 = lossy(&line)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            rest = &rest[len..];
            continue;
        }
        if c.methods.first().is_some_and(|m| m == "HEAD") || status == 204 || status == 304 {
            return false;
        }
        let body = &rest[len..];
        let value = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| lossy(k).trim().eq_ignore_ascii_case(n))
                .map(|(_, v)| lossy(v).to_ascii_lowercase())
        };
        if value("transfer-encoding").is_some_and(|v| v.trim().ends_with("chunked")) {
            return !matches!(lenient_chunked_len(body), Ok(Some(_)));
        }
        return value("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| body.len() < n);
    }
}

/// The HTTP/2 twin of an HTTP/1.1 case of one request: the same request on stream 1 (Host as
/// `:authority`, names in lower case, the body as one DATA frame), the same upstream script,
/// an app of the same configuration. `None` for what HTTP/2 cannot say (pipelining, HTTP/1.0,
/// connection-specific fields).
fn h2_twin(c: &Case) -> Option<Case> {
    let [Step::Write(bytes)] = c.steps.as_slice() else {
        return None;
    };
    if c.methods.len() != 1 {
        return None;
    }
    let len = head_end(bytes)?;
    let (line, headers) = header_lines(&bytes[..len]);
    let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let [method, target, b"HTTP/1.1"] = parts.as_slice() else {
        return None;
    };
    let mut authority = None;
    let mut regular = Vec::new();
    for (name, value) in headers {
        let lower = lossy(&name).to_ascii_lowercase();
        match lower.as_str() {
            "host" => authority = Some(value),
            "connection" | "keep-alive" | "te" | "transfer-encoding" | "upgrade"
            | "proxy-connection" => return None,
            _ => regular.push((lower.into_bytes(), value)),
        }
    }
    let mut fields = vec![
        (b":method".to_vec(), method.to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":authority".to_vec(), authority?),
        (b":path".to_vec(), target.to_vec()),
    ];
    fields.extend(regular);
    let body = &bytes[len..];
    let mut steps = vec![H2Step::Headers(1, fields, body.is_empty())];
    if !body.is_empty() {
        steps.push(H2Step::Data(1, body.to_vec(), true));
    }
    let mut twin = c.clone();
    twin.name = format!("h2/{}", c.name);
    twin.steps = Vec::new();
    twin.h2 = Some(steps);
    twin.cut = answer_cut(c);
    Some(twin)
}

/// The HTTP/2 twins: every upstream answer of the HTTP/1.1 cases (plain and compressed), and
/// every `Accept-Encoding` shape.
fn h2_twins(h1: &[Case]) -> Vec<Case> {
    h1.iter()
        .filter(|c| c.kind == Kind::Answer || c.name.starts_with("gz/req/"))
        .filter_map(h2_twin)
        .collect()
}

/// The client's side of HTTP/2: pseudo-fields, connection-specific fields, field syntax,
/// forwarding claims, bodies and their lengths, trailers, resets, large heads, many streams,
/// stream-id mistakes. The upstream answers each request with the target it saw.
fn h2_request_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let get =
        |name: &str, extra: &[(&str, &str)]| Case::h2(format!("h2/req/{name}"), h2_get(extra));
    let head_of = |name: &str, fields: Fields| {
        Case::h2(
            format!("h2/req/{name}"),
            vec![H2Step::Headers(1, fields, true)],
        )
    };

    // Pseudo-fields and the authority.
    v.push(get("get", &[]));
    let base = h2_head("GET", &[]);
    /// A case's name, the pseudo-fields it changes (`None`: drops), the fields it adds.
    type PseudoCase<'a> = (
        &'a str,
        &'a [(&'a str, Option<&'a str>)],
        &'a [(&'a str, &'a str)],
    );
    let pseudo: &[PseudoCase] = &[
        (
            "host-instead-of-authority",
            &[(":authority", None)],
            &[("host", "$H")],
        ),
        ("authority-and-same-host", &[], &[("host", "$H")]),
        ("authority-and-other-host", &[], &[("host", "other.test")]),
        (
            "other-authority-and-our-host",
            &[(":authority", Some("other.test"))],
            &[("host", "$H")],
        ),
        ("no-authority-no-host", &[(":authority", None)], &[]),
        (
            "two-hosts-no-authority",
            &[(":authority", None)],
            &[("host", "$H"), ("host", "$H")],
        ),
        ("authority-port-80", &[(":authority", Some("$H:80"))], &[]),
        (
            "authority-port-other",
            &[(":authority", Some("$H:8080"))],
            &[],
        ),
        (
            "authority-uppercase",
            &[(":authority", Some("C$N.TEST"))],
            &[],
        ),
        (
            "authority-trailing-dot",
            &[(":authority", Some("$H."))],
            &[],
        ),
        (
            "authority-userinfo",
            &[(":authority", Some("user@$H"))],
            &[],
        ),
        ("authority-empty", &[(":authority", Some(""))], &[]),
        (
            "authority-unknown",
            &[(":authority", Some("evil.example"))],
            &[],
        ),
        ("authority-with-path", &[(":authority", Some("$H/x"))], &[]),
        ("path-absolute", &[(":path", Some("http://$H$P"))], &[]),
        (
            "path-absolute-other-app",
            &[(":path", Some("http://other.test$P"))],
            &[],
        ),
        ("path-asterisk-get", &[(":path", Some("*"))], &[]),
        ("path-empty", &[(":path", Some(""))], &[]),
        ("path-missing", &[(":path", None)], &[]),
        ("path-no-leading-slash", &[(":path", Some("case/$N/"))], &[]),
        ("path-query", &[(":path", Some("$P?x=1&y=%20"))], &[]),
        ("path-fragment", &[(":path", Some("$P#frag"))], &[]),
        (
            "path-dot-segments",
            &[(":path", Some("$P../../etc/passwd"))],
            &[],
        ),
        (
            "path-percent",
            &[(":path", Some("$P%2e%2e/%2F%00?q=%ff"))],
            &[],
        ),
        (
            "path-double-slash-host",
            &[(":path", Some("//evil.example/x"))],
            &[],
        ),
        ("path-space", &[(":path", Some("$Pa b"))], &[]),
        ("path-utf8", &[(":path", Some("$P\u{e9}t\u{e9}"))], &[]),
        ("path-backslash", &[(":path", Some("$P..\\..\\x"))], &[]),
        (
            "path-acme-token",
            &[(":path", Some("/.well-known/acme-challenge/tok$N"))],
            &[],
        ),
        ("path-long-8k", &[], &[]),
        ("method-missing", &[(":method", None)], &[]),
        ("method-lowercase", &[(":method", Some("get"))], &[]),
        ("method-unknown", &[(":method", Some("FOO"))], &[]),
        ("method-bad-char", &[(":method", Some("G@T"))], &[]),
        ("method-head", &[(":method", Some("HEAD"))], &[]),
        ("method-delete", &[(":method", Some("DELETE"))], &[]),
        ("method-options", &[(":method", Some("OPTIONS"))], &[]),
        ("method-trace", &[(":method", Some("TRACE"))], &[]),
        (
            "method-connect",
            &[
                (":method", Some("CONNECT")),
                (":scheme", None),
                (":path", None),
                (":authority", Some("$H:80")),
            ],
            &[],
        ),
        (
            "method-connect-with-path",
            &[(":method", Some("CONNECT"))],
            &[],
        ),
        (
            "method-options-asterisk",
            &[(":method", Some("OPTIONS")), (":path", Some("*"))],
            &[],
        ),
        ("scheme-missing", &[(":scheme", None)], &[]),
        ("scheme-https", &[(":scheme", Some("https"))], &[]),
        ("scheme-other", &[(":scheme", Some("ftp"))], &[]),
        ("scheme-empty", &[(":scheme", Some(""))], &[]),
        ("protocol-on-get", &[(":protocol", Some("websocket"))], &[]),
        ("status-in-request", &[(":status", Some("200"))], &[]),
        ("unknown-pseudo", &[(":foo", Some("bar"))], &[]),
    ];
    for (name, changes, extra) in pseudo {
        let mut fields = with_pseudo(base.clone(), changes);
        if *name == "path-long-8k" {
            fields = with_pseudo(
                fields,
                &[(":path", Some(&format!("$P{}", "a".repeat(8000))))],
            );
        }
        fields.extend(extra.iter().map(|(n, v)| field(n, v)));
        v.push(head_of(name, fields));
    }
    let mut dup = base.clone();
    dup.push(field(":path", "$Px"));
    v.push(head_of("pseudo-path-twice", dup));
    let mut late = vec![base[0].clone(), base[1].clone(), base[2].clone()];
    late.push(field("x-early", "1"));
    late.push(base[3].clone());
    v.push(head_of("pseudo-after-regular", late));

    // Connection-specific fields (RFC 9113 §8.2.2: malformed), and TE.
    for (name, extra) in [
        ("connection-close", &[("connection", "close")][..]),
        ("connection-keep-alive", &[("connection", "keep-alive")]),
        (
            "connection-names-custom",
            &[("connection", "x-secret"), ("x-secret", "1")],
        ),
        ("keep-alive", &[("keep-alive", "timeout=5")]),
        ("proxy-connection", &[("proxy-connection", "keep-alive")]),
        (
            "transfer-encoding-chunked",
            &[("transfer-encoding", "chunked")],
        ),
        (
            "transfer-encoding-identity",
            &[("transfer-encoding", "identity")],
        ),
        ("upgrade-websocket", &[("upgrade", "websocket")]),
        (
            "upgrade-h2c",
            &[
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ],
        ),
        ("te-trailers", &[("te", "trailers")]),
        ("te-gzip", &[("te", "gzip")]),
        ("te-trailers-gzip", &[("te", "trailers, gzip")]),
        ("te-trailers-upper", &[("te", "TRAILERS")]),
        ("trailer-announced", &[("trailer", "x-t")]),
        (
            "http2-settings",
            &[("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")],
        ),
    ] {
        v.push(get(name, extra));
    }
    v.push(Case::h2(
        "h2/req/transfer-encoding-chunked-post",
        h2_with_body(
            "POST",
            &[("transfer-encoding", "chunked")],
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
    ));

    // Field syntax (RFC 9113 §8.2.1: upper case, control bytes, surrounding whitespace are
    // malformed).
    for (name, fname, value) in [
        ("name-uppercase", "X-Test", "1"),
        ("name-with-space", "x test", "1"),
        ("name-with-colon", "x:test", "1"),
        ("name-empty", "", "x"),
        ("name-with-at", "x@test", "1"),
        ("name-utf8", "x-caf\u{e9}", "1"),
        ("value-nul", "x-test", "a\0b"),
        ("value-cr", "x-test", "a\rb"),
        ("value-lf", "x-test", "a\nb"),
        ("value-crlf-injection", "x-test", "a\r\nx-injected: 1"),
        ("value-leading-space", "x-test", " a"),
        ("value-trailing-space", "x-test", "a "),
        ("value-tab-inside", "x-test", "a\tb"),
        ("value-del", "x-test", "a\x7fb"),
        ("value-utf8", "x-test", "caf\u{e9}"),
        ("value-empty", "x-test", ""),
    ] {
        v.push(get(name, &[(fname, value)]));
    }
    // Cookies may come as several fields; an HTTP/1.1 hop gets them joined (RFC 9113 §8.2.3).
    v.push(get(
        "cookie-two-fields",
        &[("cookie", "a=1"), ("cookie", "b=2")],
    ));
    v.push(get("cookie-one-field", &[("cookie", "a=1; b=2")]));
    let crumbs: Vec<(String, String)> = (0..40)
        .map(|i| ("cookie".into(), format!("c{i}=v{i}")))
        .collect();
    let crumbs: Vec<(&str, &str)> = crumbs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    v.push(get("cookie-40-crumbs", &crumbs));
    v.push(get("request-id-own", &[("x-request-id", "mine-123")]));
    v.push(get("request-id-bad", &[("x-request-id", "bad id")]));
    v.push(get(
        "proxy-authorization",
        &[("proxy-authorization", "Basic eDp5")],
    ));
    v.push(get("accept-json", &[("accept", "application/json")]));

    // Forwarding claims (values carry "spoof").
    for (name, extra) in [
        (
            "forwarded",
            &[("forwarded", "for=\"spoof\";host=spoof.example;proto=https")][..],
        ),
        ("x-forwarded-for", &[("x-forwarded-for", "spoof")]),
        (
            "x-forwarded-for-two",
            &[("x-forwarded-for", "spoof"), ("x-forwarded-for", "spoof2")],
        ),
        ("x-forwarded-host", &[("x-forwarded-host", "spoof.example")]),
        ("x-forwarded-proto", &[("x-forwarded-proto", "spoof")]),
        ("x-forwarded-port", &[("x-forwarded-port", "443spoof")]),
        ("x-forwarded-prefix", &[("x-forwarded-prefix", "/spoof")]),
        ("x-real-ip", &[("x-real-ip", "spoof")]),
        ("x-client-ip", &[("x-client-ip", "spoof")]),
        ("true-client-ip", &[("true-client-ip", "spoof")]),
        (
            "all",
            &[
                ("forwarded", "for=spoof"),
                ("x-forwarded-for", "spoof"),
                ("x-forwarded-host", "spoof"),
                ("x-forwarded-proto", "spoof"),
                ("x-forwarded-port", "spoof"),
                ("x-forwarded-prefix", "/spoof"),
                ("x-real-ip", "spoof"),
            ],
        ),
    ] {
        v.push(Case::h2(format!("h2/forwarding/{name}"), h2_get(extra)));
    }
    v.push(Case::h2(
        "h2/forwarding/x-forwarded-for-post-no-length",
        h2_with_body(
            "POST",
            &[("x-forwarded-for", "spoof"), ("x-real-ip", "spoof")],
            b"hello",
        ),
    ));

    // Bodies, with and without a length, and lengths that do not match the DATA sent.
    let d = |data: &str, end: bool| H2Step::Data(1, data.as_bytes().to_vec(), end);
    let head = |method: &str, extra: &[(&str, &str)], end: bool| {
        H2Step::Headers(1, h2_head(method, extra), end)
    };
    let cl5 = &[("content-length", "5")][..];
    let bodies: Vec<(&str, Vec<H2Step>, bool)> = vec![
        (
            "post-cl",
            vec![head("POST", cl5, false), d("hello", true)],
            false,
        ),
        (
            "post-no-cl",
            vec![head("POST", &[], false), d("hello", true)],
            false,
        ),
        (
            "post-cl-frames",
            vec![head("POST", cl5, false), d("he", false), d("llo", true)],
            false,
        ),
        (
            "post-no-cl-frames-slow",
            vec![
                head("POST", &[], false),
                d("he", false),
                H2Step::Sleep(60),
                d("l", false),
                H2Step::Sleep(60),
                d("lo", true),
            ],
            false,
        ),
        (
            "post-empty-data-frames",
            vec![
                head("POST", &[], false),
                d("", false),
                d("hello", false),
                d("", false),
                d("", true),
            ],
            false,
        ),
        (
            "post-cl-empty-end-frame",
            vec![head("POST", cl5, false), d("hello", false), d("", true)],
            false,
        ),
        ("post-headers-end", vec![head("POST", &[], true)], false),
        (
            "post-cl0-headers-end",
            vec![head("POST", &[("content-length", "0")], true)],
            false,
        ),
        (
            "post-cl0-empty-data-end",
            vec![head("POST", &[("content-length", "0")], false), d("", true)],
            false,
        ),
        (
            "post-no-cl-empty-data-end",
            vec![head("POST", &[], false), d("", true)],
            false,
        ),
        (
            "get-empty-data-end",
            vec![head("GET", &[], false), d("", true)],
            false,
        ),
        (
            "get-with-body",
            vec![head("GET", &[], false), d("hello", true)],
            false,
        ),
        (
            "get-with-body-cl",
            vec![head("GET", cl5, false), d("hello", true)],
            false,
        ),
        (
            "head-with-body",
            vec![head("HEAD", &[], false), d("hello", true)],
            false,
        ),
        (
            "delete-with-body",
            vec![head("DELETE", cl5, false), d("hello", true)],
            false,
        ),
        (
            "cl-over-data",
            vec![
                head("POST", &[("content-length", "10")], false),
                d("hello", true),
            ],
            true,
        ),
        (
            "cl-over-data-headers-end",
            vec![head("POST", cl5, true)],
            true,
        ),
        (
            "cl-under-data",
            vec![
                head("POST", &[("content-length", "3")], false),
                d("hello", true),
            ],
            true,
        ),
        (
            "cl-under-data-later-frame",
            vec![
                head("POST", &[("content-length", "3")], false),
                d("hel", false),
                H2Step::Sleep(60),
                d("lo", true),
            ],
            false, // the request is whole before the extra DATA shows it malformed
        ),
        (
            "cl0-with-data",
            vec![
                head("POST", &[("content-length", "0")], false),
                d("hello", true),
            ],
            false,
        ),
        (
            "cl-dup-same",
            vec![
                head(
                    "POST",
                    &[("content-length", "5"), ("content-length", "5")],
                    false,
                ),
                d("hello", true),
            ],
            false,
        ),
        (
            "cl-dup-diff",
            vec![
                head(
                    "POST",
                    &[("content-length", "5"), ("content-length", "6")],
                    false,
                ),
                d("hello!", true),
            ],
            true,
        ),
        (
            "cl-list-same",
            vec![
                head("POST", &[("content-length", "5, 5")], false),
                d("hello", true),
            ],
            false,
        ),
        (
            "cl-plus",
            vec![
                head("POST", &[("content-length", "+5")], false),
                d("hello", true),
            ],
            true,
        ),
        (
            "cl-text",
            vec![
                head("POST", &[("content-length", "five")], false),
                d("hello", true),
            ],
            true,
        ),
        (
            "cl-huge",
            vec![
                head("POST", &[("content-length", "99999999999999999999")], false),
                d("hello", true),
            ],
            true,
        ),
        (
            "cl-over-limit",
            vec![
                head("POST", &[("content-length", "20000000")], false),
                d("hello", true),
            ],
            true,
        ),
        (
            "trailers",
            vec![
                head("POST", &[], false),
                d("hello", false),
                H2Step::Headers(1, vec![field("x-trailer", "1")], true),
            ],
            false,
        ),
        (
            "trailers-with-cl",
            vec![
                head("POST", cl5, false),
                d("hello", false),
                H2Step::Headers(1, vec![field("x-trailer", "1")], true),
            ],
            false,
        ),
        (
            "trailers-with-pseudo",
            vec![
                head("POST", &[], false),
                d("hello", false),
                H2Step::Headers(1, vec![field(":path", "/x")], true),
            ],
            true,
        ),
        (
            "trailers-without-end-stream",
            vec![
                head("POST", &[], false),
                d("hello", false),
                H2Step::Headers(1, vec![field("x-trailer", "1")], false),
            ],
            true,
        ),
        (
            "trailers-content-length",
            vec![
                head("POST", &[], false),
                d("hello", false),
                H2Step::Headers(1, vec![field("content-length", "9")], true),
            ],
            false,
        ),
        (
            "reset-after-head",
            vec![
                head("POST", &[], false),
                H2Step::Sleep(100),
                H2Step::Rst(1, CANCEL),
            ],
            true,
        ),
        (
            "reset-mid-body-cl",
            vec![
                head("POST", &[("content-length", "10")], false),
                d("hello", false),
                H2Step::Sleep(100),
                H2Step::Rst(1, CANCEL),
            ],
            true,
        ),
        (
            "reset-mid-body-no-cl",
            vec![
                head("POST", &[], false),
                d("hello", false),
                H2Step::Sleep(100),
                H2Step::Rst(1, CANCEL),
            ],
            true,
        ),
        (
            "expect-100-continue",
            vec![
                head(
                    "POST",
                    &[("content-length", "5"), ("expect", "100-continue")],
                    false,
                ),
                H2Step::Sleep(200),
                d("hello", true),
            ],
            false,
        ),
        (
            "expect-100-continue-no-body",
            vec![head("GET", &[("expect", "100-continue")], true)],
            false,
        ),
    ];
    for (name, steps, aborted) in bodies {
        let mut c = Case::h2(format!("h2/body/{name}"), steps);
        c.aborted = aborted;
        // An empty DATA frame that ends a body: later requests must not be hurt by it.
        if name.contains("empty") {
            c = c.victims();
        }
        v.push(c);
    }
    for (name, len, with_cl) in [
        ("post-60k-cl", 60_000, true),
        ("post-60k-no-cl", 60_000, false),
        ("post-300k-no-cl", 300_000, false),
        ("post-300k-cl", 300_000, true),
    ] {
        let body = "b".repeat(len);
        let length = len.to_string();
        let extra: Vec<(&str, &str)> = if with_cl {
            vec![("content-length", &length)]
        } else {
            Vec::new()
        };
        v.push(Case::h2(
            format!("h2/body/{name}"),
            h2_with_body("POST", &extra, body.as_bytes()),
        ));
    }
    let binary: Vec<u8> = (0..=255u8).collect();
    v.push(Case::h2(
        "h2/body/binary",
        h2_with_body("POST", &[("content-length", "256")], &binary),
    ));

    // Large heads (the app's limit is 32 KiB; the h2 layer's list limit differs per path).
    for len in [8_000, 20_000, 40_000, 70_000] {
        let value = "v".repeat(len);
        v.push(get(
            &format!("header-long-{}k", len / 1000),
            &[("x-long", &value)],
        ));
    }
    for n in [100, 200] {
        let many: Vec<(String, String)> =
            (0..n).map(|i| (format!("x-h{i}"), i.to_string())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        v.push(get(&format!("headers-many-{n}"), &many));
    }

    // Many streams at once on one connection: each must get its own answer. The upstream
    // answers after 200 ms, so that all of them are open together.
    let slow_echo = vec![Act::Sleep(200), Act::Echo];
    for n in [10, 60, 150] {
        let steps: Vec<H2Step> = (0..n)
            .map(|k| {
                H2Step::Headers(
                    2 * k + 1,
                    with_pseudo(h2_head("GET", &[]), &[(":path", Some(&format!("$Ps{k}")))]),
                    true,
                )
            })
            .collect();
        let mut c = Case::h2(format!("h2/streams/{n}-at-once"), steps);
        c.script = Some(slow_echo.clone());
        v.push(c);
    }
    // Bodies of several streams interleaved.
    let mut steps = Vec::new();
    for k in 0..8u32 {
        steps.push(H2Step::Headers(
            2 * k + 1,
            with_pseudo(h2_head("POST", &[]), &[(":path", Some(&format!("$Ps{k}")))]),
            false,
        ));
    }
    for part in 0..3 {
        for k in 0..8u32 {
            steps.push(H2Step::Data(
                2 * k + 1,
                format!("s{k}p{part};").into_bytes(),
                part == 2,
            ));
        }
    }
    v.push(Case::h2("h2/streams/8-bodies-interleaved", steps));
    // Stream-id mistakes (connection errors, RFC 9113 §5.1.1) and frames out of place.
    let get1 = H2Step::Headers(1, h2_head("GET", &[]), true);
    let get_on = |s: u32| {
        H2Step::Headers(
            s,
            with_pseudo(h2_head("GET", &[]), &[(":path", Some(&format!("$Ps{s}")))]),
            true,
        )
    };
    v.push(Case::h2("h2/streams/even-id", vec![get_on(2)]));
    v.push(Case::h2(
        "h2/streams/decreasing-ids",
        vec![get_on(5), H2Step::Sleep(50), get_on(3)],
    ));
    v.push(Case::h2(
        "h2/streams/headers-on-closed-stream",
        vec![get1.clone(), H2Step::Sleep(300), get_on(1)],
    ));
    v.push(Case::h2(
        "h2/streams/data-on-idle-stream",
        vec![
            H2Step::Raw(support::h2wire::frame(
                support::h2wire::DATA,
                0x1,
                7,
                b"hello",
            )),
            get1.clone(),
        ],
    ));
    v.push(Case::h2(
        "h2/streams/data-on-stream-0",
        vec![
            H2Step::Raw(support::h2wire::frame(
                support::h2wire::DATA,
                0x1,
                0,
                b"hello",
            )),
            get1.clone(),
        ],
    ));
    v.push(Case::h2(
        "h2/streams/priority-then-get",
        vec![
            H2Step::Raw(support::h2wire::frame(
                support::h2wire::PRIORITY,
                0,
                1,
                &[0, 0, 0, 0, 15],
            )),
            get1.clone(),
        ],
    ));
    v.push(Case::h2(
        "h2/streams/unknown-frame-then-get",
        vec![
            H2Step::Raw(support::h2wire::frame(0xfa, 0, 0, b"ignore me")),
            get1.clone(),
        ],
    ));
    v.push(Case::h2(
        "h2/streams/rst-idle-stream",
        vec![H2Step::Rst(9, CANCEL), get1.clone()],
    ));
    v.push(Case::h2(
        "h2/streams/window-update-zero",
        vec![
            get1.clone(),
            H2Step::Raw(support::h2wire::frame(
                support::h2wire::WINDOW_UPDATE,
                0,
                1,
                &[0, 0, 0, 0],
            )),
        ],
    ));
    v
}

/// The upstream's side of HTTP/2 beyond the twins: what the client does while an answer is
/// under way (resets, small windows), trailers asked for with `te: trailers`.
fn h2_answer_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let html = "Content-Type: text/html\r\n";
    let t70k = text(70_000);
    let get1 = |extra: &[(&str, &str)]| H2Step::Headers(1, h2_head("GET", extra), true);
    let slow_70k = in_writes(&with_cl("200 OK", html, &t70k), 4, 150);
    // The client resets its stream while the answer is under way: that upstream connection
    // must not carry another request (its answer is unfinished); the probe and the victims
    // after it must get theirs.
    v.push(
        Case::h2_answer(
            "h2/ans/reset-before-answer",
            vec![get1(&[]), H2Step::Sleep(100), H2Step::Rst(1, CANCEL)],
            vec![
                Act::Sleep(300),
                send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            ],
        )
        .victims(),
    );
    v.push(
        Case::h2_answer(
            "h2/ans/reset-mid-answer",
            vec![get1(&[]), H2Step::Sleep(200), H2Step::Rst(1, CANCEL)],
            slow_70k.clone(),
        )
        .victims(),
    );
    v.push(
        Case::h2_answer(
            "h2/ans/reset-mid-answer-gzip",
            vec![
                get1(&[("accept-encoding", "gzip")]),
                H2Step::Sleep(200),
                H2Step::Rst(1, CANCEL),
            ],
            slow_70k.clone(),
        )
        .victims(),
    );
    let chunked_70k = with_te("200 OK", html, &chunks_of(&t70k, 8000, "", ""));
    v.push(
        Case::h2_answer(
            "h2/ans/reset-mid-chunked-answer",
            vec![get1(&[]), H2Step::Sleep(200), H2Step::Rst(1, CANCEL)],
            in_writes(&chunked_70k, 4, 150),
        )
        .victims(),
    );
    // A client with a 1 KiB window, credited as it reads.
    let tiny = support::h2wire::frame(
        support::h2wire::SETTINGS,
        0,
        0,
        &[0, 4, 0, 0, 4, 0], // SETTINGS_INITIAL_WINDOW_SIZE = 1024
    );
    for (name, script, extra) in [
        (
            "tiny-window-70k",
            vec![send(with_cl("200 OK", html, &t70k))],
            &[][..],
        ),
        ("tiny-window-70k-chunked", vec![send(&chunked_70k)], &[]),
        (
            "tiny-window-70k-gzip",
            vec![send(with_cl("200 OK", html, &t70k))],
            &[("accept-encoding", "gzip")],
        ),
    ] {
        v.push(Case::h2_answer(
            format!("h2/ans/{name}"),
            vec![H2Step::Raw(tiny.clone()), H2Step::Sleep(20), get1(extra)],
            script,
        ));
    }
    // Trailers, asked for.
    v.push(Case::h2_answer(
        "h2/ans/chunked-trailers-te-trailers",
        vec![get1(&[("te", "trailers")])],
        vec![send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-trailer\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")],
    ));
    // Answers with fields HTTP/2 cannot carry as they are.
    v.push(Case::h2_answer(
        "h2/ans/header-name-uppercase-and-odd",
        vec![get1(&[])],
        vec![send(
            "HTTP/1.1 200 OK\r\nX-UPPER: 1\r\nX_Under: 2\r\nContent-Length: 5\r\n\r\nhello",
        )],
    ));
    v.push(Case::h2_answer(
        "h2/ans/header-values-tab-utf8",
        vec![get1(&[])],
        vec![send(
            "HTTP/1.1 200 OK\r\nX-Tab: a\tb\r\nX-Utf8: caf\u{e9}\r\nContent-Length: 5\r\n\r\nhello",
        )],
    ));
    v.push(Case::h2_answer(
        "h2/ans/connection-listed-field",
        vec![get1(&[])],
        vec![send(
            "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello",
        )],
    ));
    v.push(Case::h2_answer(
        "h2/ans/set-cookie-three",
        vec![get1(&[])],
        vec![send("HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nSet-Cookie: c=3\r\nContent-Length: 5\r\n\r\nhello")],
    ));
    v
}

// ---------------------------------------------------------------------------------------------
// The recording upstream.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    /// Health checks and warm-up requests: answered, not part of the comparison.
    Quiet,
    Case,
    Probe,
    Victim,
}

/// One connection as the upstream saw it.
#[derive(Debug)]
struct ConnLog {
    raw: Vec<u8>,
    /// Each complete request: when, where in `raw`, what.
    requests: Vec<(Instant, Range<usize>, ReqKind)>,
    /// Bytes of `raw` taken by complete requests.
    parsed: usize,
    last: Instant,
}

type Log = Arc<Mutex<Vec<ConnLog>>>;

#[derive(Debug)]
struct Spec {
    id: usize,
    /// The app `other.test`: answers `other saw <target>` to everything.
    other: bool,
    script: Option<Vec<Act>>,
}

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    log: Log,
}

async fn start_upstream(spec: Spec) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a recording upstream");
    let addr = listener.local_addr().expect("its address");
    let log: Log = Arc::default();
    let spec = Arc::new(spec);
    let served = Arc::new(AtomicUsize::new(0));
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, spec.clone(), l.clone(), served.clone()));
        }
    });
    Upstream { addr, log }
}

/// Where a message head ends (after its blank line; CRLF or bare LF).
/// `b` is exactly one bodiless request for the harness's own paths (`/__health`, `/__warm`).
fn is_one_quiet_request(b: &[u8]) -> bool {
    let line = b.split(|c| *c == b' ').nth(1).unwrap_or_default();
    head_end(b) == Some(b.len())
        && b.starts_with(b"GET ")
        && (line.starts_with(HEALTH.as_bytes()) || line.starts_with(WARM.as_bytes()))
}

fn head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Header lines of a head (after the start line), as (name, value) with OWS trimmed; a folded
/// line is joined to the previous one with a space; a line without a colon has an empty name.
/// Header fields as (name, value) bytes, in order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn header_lines(head: &[u8]) -> (Vec<u8>, Fields) {
    let mut lines = head.split(|b| *b == b'\n').map(trim_cr);
    let start = lines.next().unwrap_or_default().to_vec();
    let mut out: Fields = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(last) = out.last_mut() {
                last.1.push(b' ');
                last.1.extend_from_slice(line.trim_ascii());
                continue;
            }
        }
        match line.iter().position(|b| *b == b':') {
            Some(c) => out.push((line[..c].to_vec(), line[c + 1..].trim_ascii().to_vec())),
            None => out.push((Vec::new(), line.to_vec())),
        }
    }
    (start, out)
}

#[derive(Debug)]
enum UpBody {
    None,
    Length(usize),
    Chunked,
}

#[derive(Debug)]
struct UpHead {
    len: usize,
    method: String,
    target: String,
    expect_continue: bool,
    body: UpBody,
}

/// The upstream reads requests leniently: it only needs to know where each ends to answer it
/// (the bytes are recorded as they came, and judged later).
fn up_head(buf: &[u8]) -> Option<UpHead> {
    let len = head_end(buf)?;
    let (start, headers) = header_lines(&buf[..len]);
    let mut parts = start.split(|b| *b == b' ');
    let method = lossy(parts.next().unwrap_or_default());
    let target = lossy(parts.next().unwrap_or_default());
    let (mut chunked, mut length, mut expect_continue) = (false, None, false);
    for (name, value) in &headers {
        let name = lossy(name).trim().to_ascii_lowercase();
        let value = lossy(value).to_ascii_lowercase();
        match name.as_str() {
            "transfer-encoding" => {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim() == "chunked");
            }
            "content-length" if length.is_none() => {
                length = value.split(',').next().and_then(|v| v.trim().parse().ok());
            }
            "expect" => expect_continue = value == "100-continue",
            _ => {}
        }
    }
    let body = if chunked {
        UpBody::Chunked
    } else {
        length.map_or(UpBody::None, UpBody::Length)
    };
    Some(UpHead {
        len,
        method,
        target,
        expect_continue,
        body,
    })
}

/// How long a (leniently read) chunked body is. `Ok(None)`: incomplete; `Err`: unreadable.
fn lenient_chunked_len(b: &[u8]) -> Result<Option<usize>, ()> {
    let mut i = 0;
    loop {
        let Some(nl) = b[i..].iter().position(|c| *c == b'\n') else {
            return Ok(None);
        };
        let line = trim_cr(&b[i..i + nl]);
        let digits: Vec<u8> = line
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .copied()
            .collect();
        if digits.is_empty() || digits.len() > 15 {
            return Err(());
        }
        let size = usize::from_str_radix(&lossy(&digits), 16).map_err(|_| ())?;
        i += nl + 1;
        if size == 0 {
            loop {
                let Some(nl) = b[i..].iter().position(|c| *c == b'\n') else {
                    return Ok(None);
                };
                let line = trim_cr(&b[i..i + nl]);
                i += nl + 1;
                if line.is_empty() {
                    return Ok(Some(i));
                }
            }
        }
        if b.len() < i + size + 1 {
            return Ok(None);
        }
        i += size;
        match (b.get(i), b.get(i + 1)) {
            (Some(b'\n'), _) => i += 1,
            (Some(b'\r'), Some(b'\n')) => i += 2,
            (Some(b'\r'), None) => return Ok(None),
            _ => return Err(()),
        }
    }
}

async fn serve(mut s: TcpStream, spec: Arc<Spec>, log: Log, served: Arc<AtomicUsize>) {
    let _ = s.set_nodelay(true);
    let conn = {
        let mut l = log.lock().expect("log");
        l.push(ConnLog {
            raw: Vec::new(),
            requests: Vec::new(),
            parsed: 0,
            last: Instant::now(),
        });
        l.len() - 1
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0;
    let mut continued = false;
    loop {
        // A complete request at the start of `buf`?
        let mut complete = None;
        if let Some(head) = up_head(&buf) {
            // Always, even when the body came along (RFC 9110 §10.1.1 lets a server omit it
            // then): whether it did must not decide what the client sees.
            if head.expect_continue && !continued {
                continued = true;
                if s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                    return;
                }
            }
            let rest = &buf[head.len..];
            let body = match head.body {
                UpBody::None => Ok(Some(0)),
                UpBody::Length(n) => Ok((rest.len() >= n).then_some(n)),
                UpBody::Chunked => lenient_chunked_len(rest),
            };
            match body {
                Ok(Some(n)) => complete = Some((head.len + n, head)),
                Ok(None) => {}
                Err(()) => return, // unreadable: the rest stays unparsed in the log
            }
        }
        let Some((len, head)) = complete else {
            let mut chunk = vec![0u8; 65536];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    let mut l = log.lock().expect("log");
                    l[conn].raw.extend_from_slice(&chunk[..n]);
                    l[conn].last = Instant::now();
                }
            }
            if buf.len() > 1 << 20 {
                return;
            }
            continue;
        };
        let target = head.target.as_str();
        let kind = if target.starts_with(HEALTH) || target.starts_with(WARM) {
            ReqKind::Quiet
        } else if target.starts_with("/probe/") {
            ReqKind::Probe
        } else if target.starts_with("/victim/") {
            ReqKind::Victim
        } else {
            ReqKind::Case
        };
        {
            let mut l = log.lock().expect("log");
            let entry = &mut l[conn];
            entry
                .requests
                .push((Instant::now(), base..base + len, kind));
            entry.parsed = base + len;
        }
        buf.drain(..len);
        base += len;
        continued = false;
        let head_only = head.method.eq_ignore_ascii_case("HEAD");
        let plain_answer = |body: String| {
            let mut a = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if !head_only {
                a.push_str(&body);
            }
            vec![Act::Send(a.into_bytes())]
        };
        let script = match kind {
            ReqKind::Quiet => plain_answer("ok\n".into()),
            ReqKind::Probe => plain_answer(format!("probe {}\n", spec.id)),
            ReqKind::Victim => {
                let k = target.rsplit('/').next().unwrap_or_default();
                plain_answer(format!("victim {} {k}\n", spec.id))
            }
            ReqKind::Case if spec.other => plain_answer(format!("other saw {target}\n")),
            ReqKind::Case => match &spec.script {
                Some(script) => script.clone(),
                None => {
                    let i = served.fetch_add(1, Ordering::SeqCst);
                    plain_answer(format!("case {} #{i}\n", spec.id))
                }
            },
        };
        for act in script {
            match act {
                Act::Send(bytes) => {
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Act::Echo => {
                    let body = format!("case {} saw {target}\n", spec.id);
                    for act in plain_answer(body) {
                        if let Act::Send(bytes) = act
                            && s.write_all(&bytes).await.is_err()
                        {
                            return;
                        }
                    }
                }
                Act::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Act::Close => {
                    let _ = s.shutdown().await;
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The raw client.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Complete,
    Closed,
    Timeout,
    NotRun,
}

#[derive(Debug)]
struct Transcript {
    bytes: Vec<u8>,
    /// Where in `bytes` the probe was sent (`None`: the connection had closed).
    probe_at: Option<usize>,
    phase1: Stop,
    phase2: Stop,
    closed: bool,
    /// What each victim got (`Err`: it got someone else's answer).
    victims: Vec<Result<(), String>>,
    /// An HTTP/2 case's frames (then `bytes` is empty).
    h2: Option<H2Log>,
}

fn probe_request(id: usize) -> Vec<u8> {
    format!("GET /probe/{id} HTTP/1.1\r\nHost: c{id}.test\r\n\r\n").into_bytes()
}

/// Reads until `finals` final answers parse, the connection closes, or `deadline`.
async fn read_until(
    s: &mut TcpStream,
    bytes: &mut Vec<u8>,
    methods: &[String],
    finals: usize,
    deadline: tokio::time::Instant,
) -> Stop {
    loop {
        if finals != usize::MAX && parse_stream(bytes, methods, false).finals() >= finals {
            return Stop::Complete;
        }
        let mut chunk = vec![0u8; 65536];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Stop::Closed,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => return Stop::Timeout,
        }
    }
}

fn after(d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + d
}

async fn run_case(edge: SocketAddr, case: &Case, id: usize) -> Transcript {
    let mut t = Transcript {
        bytes: Vec::new(),
        probe_at: None,
        phase1: Stop::NotRun,
        phase2: Stop::NotRun,
        closed: false,
        victims: Vec::new(),
        h2: None,
    };
    let mut s = TcpStream::connect(edge).await.expect("connect to the edge");
    let _ = s.set_nodelay(true);
    let mut methods = case.methods.clone();
    for step in &case.steps {
        match step {
            Step::Write(b) => {
                if s.write_all(&fill(b, id)).await.is_err() {
                    break;
                }
            }
            Step::Sleep(ms) => {
                let deadline = after(Duration::from_millis(*ms));
                if read_until(&mut s, &mut t.bytes, &methods, usize::MAX, deadline).await
                    == Stop::Closed
                {
                    t.closed = true;
                    break;
                }
            }
        }
    }
    t.phase1 = if t.closed {
        Stop::Closed
    } else {
        read_until(&mut s, &mut t.bytes, &methods, methods.len(), after(PHASE)).await
    };
    t.closed = t.phase1 == Stop::Closed;
    if !t.closed && case.settle > 0 {
        let deadline = after(Duration::from_millis(case.settle));
        t.closed =
            read_until(&mut s, &mut t.bytes, &methods, usize::MAX, deadline).await == Stop::Closed;
    }
    if !t.closed {
        t.probe_at = Some(t.bytes.len());
        methods.push("GET".into());
        let _ = s.write_all(&probe_request(id)).await;
        t.phase2 = read_until(&mut s, &mut t.bytes, &methods, methods.len(), after(PHASE)).await;
        t.closed = t.phase2 == Stop::Closed;
        if t.phase2 == Stop::Complete {
            let deadline = after(AFTER_PROBE);
            t.closed = read_until(&mut s, &mut t.bytes, &methods, usize::MAX, deadline).await
                == Stop::Closed;
        }
    }
    drop(s);
    for k in 0..case.victims {
        t.victims.push(victim(edge, id, k).await);
    }
    t
}

/// A later request on a fresh connection: it must get its own answer.
async fn victim(edge: SocketAddr, id: usize, k: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(edge).await.expect("connect to the edge");
    let request = format!("GET /victim/{id}/{k} HTTP/1.1\r\nHost: c{id}.test\r\n\r\n");
    let _ = s.write_all(request.as_bytes()).await;
    let mut bytes = Vec::new();
    let methods = vec!["GET".to_string()];
    read_until(&mut s, &mut bytes, &methods, 1, after(PHASE)).await;
    let parsed = parse_stream(&bytes, &methods, true);
    let expected = format!("victim {id} {k}\n");
    let Some(m) = parsed.msgs.iter().find(|m| !m.interim()) else {
        return Ok(()); // no answer at all: not someone else's
    };
    let (body, _) = decoded_body(m);
    if body == expected.as_bytes() || (m.status >= 400 && !has_marker(&body)) {
        Ok(())
    } else {
        Err(format!(
            "victim {k} got {} {}",
            m.status,
            esc_cap(&body, 60)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading what the client got.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Bodiless,
    Length,
    Chunked,
    UntilClose,
    /// Length or chunked, cut short by the close.
    Truncated,
}

#[derive(Debug)]
struct Msg {
    start: usize,
    status: u16,
    line: Vec<u8>,
    bare_lf: bool,
    headers: Fields,
    framing: Framing,
    body: Vec<u8>,
    /// A chunked body's trailer fields.
    trailers: Fields,
}

impl Msg {
    fn interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

#[derive(Debug)]
enum Tail {
    None,
    /// More bytes are needed (from this offset).
    Incomplete(usize),
    /// Not a valid answer from this offset on.
    Garbage(usize, String),
}

#[derive(Debug)]
struct Parsed {
    msgs: Vec<Msg>,
    tail: Tail,
}

impl Parsed {
    fn finals(&self) -> usize {
        self.msgs.iter().filter(|m| !m.interim()).count()
    }
}

enum Dechunked {
    /// Where the body ends, its data, and its trailer fields.
    Done(usize, Vec<u8>, Fields),
    Need,
    Bad(&'static str),
}

/// A chunked body read as strictly as RFC 9112 §7.1 writes it.
fn dechunk(b: &[u8]) -> Dechunked {
    let find_crlf = |from: usize| {
        b[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    let mut i = 0;
    let mut body = Vec::new();
    loop {
        let Some(end) = find_crlf(i) else {
            return if b[i..].contains(&b'\n') {
                Dechunked::Bad("bare LF in chunk framing")
            } else {
                Dechunked::Need
            };
        };
        let line = &b[i..end];
        if line.contains(&b'\n') || line.contains(&b'\r') {
            return Dechunked::Bad("bare CR or LF in a chunk-size line");
        }
        // Whitespace only before an extension (BWS ";").
        let size = match line.iter().position(|c| *c == b';') {
            Some(p) => line[..p].trim_ascii_end(),
            None => line,
        };
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Dechunked::Bad("invalid chunk size");
        }
        let Ok(size) = usize::from_str_radix(&lossy(size), 16) else {
            return Dechunked::Bad("chunk size out of range");
        };
        i = end + 2;
        if size == 0 {
            let start = i;
            loop {
                let Some(end) = find_crlf(i) else {
                    return Dechunked::Need;
                };
                let line = &b[i..end];
                if line.contains(&b'\n') {
                    return Dechunked::Bad("bare LF in trailers");
                }
                i = end + 2;
                if line.is_empty() {
                    // Read as a head's fields (after a placeholder start line).
                    let (_, trailers) = header_lines(&[b"-\r\n", &b[start..i]].concat());
                    return Dechunked::Done(i, body, trailers);
                }
            }
        }
        if b.len() < i + size + 2 {
            return Dechunked::Need;
        }
        body.extend_from_slice(&b[i..i + size]);
        i += size;
        if &b[i..i + 2] != b"\r\n" {
            return Dechunked::Bad("chunk data not followed by CRLF");
        }
        i += 2;
    }
}

/// The data of a chunked body cut short (chunk framing dropped, however it was cut), so that a
/// re-chunked and a passed-through copy of the same bytes compare equal.
fn dechunk_partial(b: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(nl) = b[i..].iter().position(|c| *c == b'\n') else {
            break;
        };
        let line = trim_cr(&b[i..i + nl]);
        let digits: Vec<u8> = line
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .copied()
            .collect();
        let Ok(size) = usize::from_str_radix(&lossy(&digits), 16) else {
            break;
        };
        i += nl + 1;
        let take = size.min(b.len() - i);
        body.extend_from_slice(&b[i..i + take]);
        i += take;
        if size == 0 || take < size {
            break;
        }
        i = (i + 2).min(b.len());
    }
    body
}

/// Splits what the client received into answers, as a strict HTTP/1.1 client would (RFC 9112
/// §6.3); `methods` are the requests in order (HEAD answers have no body); `closed`: the
/// connection ended after these bytes.
fn parse_stream(buf: &[u8], methods: &[String], closed: bool) -> Parsed {
    let mut msgs = Vec::new();
    let mut i = 0;
    let mut request = 0;
    let tail = loop {
        if i == buf.len() {
            break Tail::None;
        }
        let b = &buf[i..];
        if !b.starts_with(b"HTTP/") {
            if b.len() < 5 && b"HTTP/".starts_with(b) && !closed {
                break Tail::Incomplete(i);
            }
            break Tail::Garbage(i, "not a status line".into());
        }
        let Some(len) = head_end(b) else {
            break Tail::Incomplete(i);
        };
        let head = &b[..len];
        let bare_lf = head
            .iter()
            .enumerate()
            .any(|(j, c)| *c == b'\n' && (j == 0 || head[j - 1] != b'\r'));
        let (line, headers) = header_lines(head);
        let status = line
            .get(9..12)
            .filter(|_| line.get(8) == Some(&b' ') && line.get(12).is_none_or(|c| *c == b' '))
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u16>().ok());
        // Three digits (RFC 9110 §15); 600-999 are not HTTP's, but they frame like any final.
        let Some(status) = status.filter(|s| (100..1000).contains(s)) else {
            break Tail::Garbage(i, "invalid status line".into());
        };
        let named = |n: &'static str| {
            headers
                .iter()
                .filter(move |(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
                .map(|(_, v)| lossy(v))
        };
        let head_request = methods
            .get(request)
            .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"));
        let codings: Vec<String> = named("transfer-encoding")
            .flat_map(|v| {
                v.split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect();
        let lengths: Vec<String> = named("content-length")
            .flat_map(|v| {
                v.split(',')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut framing =
            if (100..200).contains(&status) || head_request || status == 204 || status == 304 {
                Framing::Bodiless
            } else if !codings.is_empty() {
                if codings.last().is_some_and(|c| c == "chunked") {
                    Framing::Chunked
                } else {
                    Framing::UntilClose
                }
            } else if !lengths.is_empty() {
                Framing::Length
            } else {
                Framing::UntilClose
            };
        let mut body = Vec::new();
        let mut trailers = Fields::new();
        let rest = &b[len..];
        let mut used = len;
        match framing {
            Framing::Bodiless => {}
            Framing::Length => {
                let valid = lengths.iter().all(|l| {
                    !l.is_empty() && l.len() <= 19 && l.bytes().all(|c| c.is_ascii_digit())
                });
                let distinct: BTreeSet<u64> =
                    lengths.iter().filter_map(|l| l.parse().ok()).collect();
                if !valid || distinct.len() != 1 {
                    break Tail::Garbage(i, "invalid or conflicting Content-Length".into());
                }
                let n = distinct.into_iter().next().unwrap_or(0) as usize;
                if rest.len() >= n {
                    body.extend_from_slice(&rest[..n]);
                    used += n;
                } else if closed {
                    body.extend_from_slice(rest);
                    used += rest.len();
                    framing = Framing::Truncated;
                } else {
                    break Tail::Incomplete(i);
                }
            }
            Framing::Chunked => match dechunk(rest) {
                Dechunked::Done(n, decoded, fields) => {
                    body = decoded;
                    trailers = fields;
                    used += n;
                }
                Dechunked::Need if closed => {
                    body = dechunk_partial(rest);
                    used += rest.len();
                    framing = Framing::Truncated;
                }
                Dechunked::Need => break Tail::Incomplete(i),
                Dechunked::Bad(why) => break Tail::Garbage(i + len, why.into()),
            },
            Framing::UntilClose => {
                if !closed {
                    break Tail::Incomplete(i);
                }
                body.extend_from_slice(rest);
                used += rest.len();
            }
            Framing::Truncated => {}
        }
        if !(100..200).contains(&status) {
            request += 1;
        }
        msgs.push(Msg {
            start: i,
            status,
            line,
            bare_lf,
            headers,
            framing,
            body,
            trailers,
        });
        i += used;
    };
    Parsed { msgs, tail }
}

// ---------------------------------------------------------------------------------------------
// The HTTP/2 client.
// ---------------------------------------------------------------------------------------------

/// What an HTTP/2 client saw on its connection.
#[derive(Debug, Default)]
struct H2Log {
    /// Every frame but the connection's housekeeping (SETTINGS, PING, WINDOW_UPDATE), in order.
    frames: Vec<Frame>,
    /// The streams the case opened, in order.
    opened: Vec<u32>,
    /// The probe's stream (`None`: not sent, the connection had ended or was going away).
    probe: Option<u32>,
    /// The streams of the victims sent on this connection (judged on their own).
    victims: Vec<u32>,
    /// Writing failed before every step was sent.
    send_failed: bool,
}

impl H2Log {
    /// Whether stream `s` has ended (END_STREAM or RST_STREAM) or never will (a GOAWAY below it).
    fn done(&self, s: u32) -> bool {
        self.frames.iter().any(|f| match f {
            Frame::Headers { stream, end, .. } | Frame::Data { stream, end, .. } => {
                *stream == s && *end
            }
            Frame::Rst { stream, .. } => *stream == s,
            Frame::GoAway { last, .. } => *last < s,
            _ => false,
        })
    }

    fn goaway(&self) -> Option<(u32, u32)> {
        self.frames.iter().find_map(|f| match f {
            Frame::GoAway { last, code, .. } => Some((*last, *code)),
            _ => None,
        })
    }
}

/// Reads frames until `until` holds, the connection closes, or `deadline`.
async fn h2_read(
    c: &mut h2wire::Client,
    log: &mut H2Log,
    deadline: tokio::time::Instant,
    until: impl Fn(&H2Log) -> bool,
) -> Stop {
    loop {
        if until(log) {
            return Stop::Complete;
        }
        match c.next(deadline).await {
            Next::Frame(
                Frame::Settings { .. } | Frame::Ping { .. } | Frame::WindowUpdate { .. },
            ) => {}
            Next::Frame(f) => log.frames.push(f),
            Next::Closed => return Stop::Closed,
            Next::Timeout => return Stop::Timeout,
        }
    }
}

fn h2_get_fields(id: usize, path: &str) -> Fields {
    vec![
        field(":method", "GET"),
        field(":scheme", "http"),
        field(":authority", &format!("c{id}.test")),
        field(":path", path),
    ]
}

/// Runs an HTTP/2 case: its steps on one connection, then the probe on the same connection
/// (when it is still open and not going away), then the victims: half as later streams on the
/// same connection (the same proxy thread, so the same upstream pool), half on fresh
/// connections with the `h2` crate's client.
async fn run_h2_case(edge: SocketAddr, case: &Case, id: usize) -> Transcript {
    let mut t = Transcript {
        bytes: Vec::new(),
        probe_at: None,
        phase1: Stop::NotRun,
        phase2: Stop::NotRun,
        closed: false,
        victims: Vec::new(),
        h2: None,
    };
    let mut log = H2Log::default();
    let mut c = h2wire::Client::connect(edge, &[], 16 << 20)
        .await
        .expect("connect to the edge");
    for step in case.h2.as_deref().unwrap_or_default() {
        let sent = match step {
            H2Step::Headers(s, fields, end) => {
                if !log.opened.contains(s) {
                    log.opened.push(*s);
                }
                let filled: Fields = fields
                    .iter()
                    .map(|(n, v)| (fill(n, id), fill(v, id)))
                    .collect();
                c.headers(*s, &filled, *end).await
            }
            H2Step::Data(s, data, end) => c.data(*s, &fill(data, id), *end).await,
            H2Step::Rst(s, code) => c.rst(*s, *code).await,
            H2Step::Raw(bytes) => c.send_raw(bytes).await,
            H2Step::Sleep(ms) => {
                let deadline = after(Duration::from_millis(*ms));
                t.closed = h2_read(&mut c, &mut log, deadline, |_| false).await == Stop::Closed;
                Ok(())
            }
        };
        if sent.is_err() {
            log.send_failed = true;
            break;
        }
        if t.closed {
            break;
        }
    }
    let opened = log.opened.clone();
    t.phase1 = if t.closed {
        Stop::Closed
    } else {
        let all_done = |l: &H2Log| opened.iter().all(|s| l.done(*s));
        h2_read(&mut c, &mut log, after(PHASE), all_done).await
    };
    t.closed = t.phase1 == Stop::Closed;
    if !t.closed && case.settle > 0 {
        let deadline = after(Duration::from_millis(case.settle));
        t.closed = h2_read(&mut c, &mut log, deadline, |_| false).await == Stop::Closed;
    }
    let mut next = opened.iter().max().map_or(1, |m| (m | 1) + 2);
    if !t.closed && log.goaway().is_none() {
        let probe = next;
        next += 2;
        log.probe = Some(probe);
        let fields = h2_get_fields(id, &format!("/probe/{id}"));
        if c.headers(probe, &fields, true).await.is_ok() {
            t.phase2 = h2_read(&mut c, &mut log, after(PHASE), |l| l.done(probe)).await;
            t.closed = t.phase2 == Stop::Closed;
            if t.phase2 == Stop::Complete {
                let deadline = after(AFTER_PROBE);
                t.closed = h2_read(&mut c, &mut log, deadline, |_| false).await == Stop::Closed;
            }
        }
    }
    for k in 0..case.victims {
        if k < case.victims / 2 && !t.closed && log.goaway().is_none() {
            let s = next;
            next += 2;
            log.victims.push(s);
            let fields = h2_get_fields(id, &format!("/victim/{id}/{k}"));
            if c.headers(s, &fields, true).await.is_err() {
                continue;
            }
            t.closed = h2_read(&mut c, &mut log, after(PHASE), |l| l.done(s)).await == Stop::Closed;
            let answer = h2_answer(&log, s);
            t.victims.push(match answer.head {
                Some(head) => judge_victim(id, k, status_of(&head), &answer.body),
                None => Ok(()),
            });
        } else {
            t.victims.push(h2_victim(edge, id, k).await);
        }
    }
    t.h2 = Some(log);
    t
}

/// A victim's answer: its own, or a page the edge made (not someone else's).
fn judge_victim(id: usize, k: usize, status: u16, body: &[u8]) -> Result<(), String> {
    let expected = format!("victim {id} {k}\n");
    if body == expected.as_bytes() || (status >= 400 && !has_marker(body)) {
        Ok(())
    } else {
        Err(format!("victim {k} got {status} {}", esc_cap(body, 60)))
    }
}

/// A victim on a fresh connection, with the `h2` crate's client.
async fn h2_victim(edge: SocketAddr, id: usize, k: usize) -> Result<(), String> {
    let exchange = async {
        let tcp = TcpStream::connect(edge).await.map_err(|e| e.to_string())?;
        let (send, conn) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut send = send.ready().await.map_err(|e| e.to_string())?;
        let request = http::Request::get(format!("http://c{id}.test/victim/{id}/{k}"))
            .body(())
            .map_err(|e| e.to_string())?;
        let (answer, _) = send
            .send_request(request, true)
            .map_err(|e| e.to_string())?;
        let answer = answer.await.map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        let mut body = answer.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok::<_, String>((status, bytes))
    };
    match tokio::time::timeout(PHASE, exchange).await {
        Ok(Ok((status, body))) => judge_victim(id, k, status, &body),
        _ => Ok(()), // no answer at all: not someone else's
    }
}

// ---------------------------------------------------------------------------------------------
// Reading and judging what an HTTP/2 client got.
// ---------------------------------------------------------------------------------------------

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2End {
    Stream,
    Reset(u32),
}

/// One stream's answer as the client read it.
#[derive(Debug, Default)]
struct H2Answer {
    interim: Vec<Fields>,
    /// The final head (`:status` included).
    head: Option<Fields>,
    body: Vec<u8>,
    trailers: Fields,
    end: Option<H2End>,
    /// RST_STREAM after END_STREAM (the request's side was still open).
    reset_after: Option<u32>,
    /// What broke the protocol's rules on this stream.
    misplaced: Vec<String>,
}

fn status_of(fields: &Fields) -> u16 {
    fields
        .iter()
        .find(|(n, _)| n == b":status")
        .and_then(|(_, v)| lossy(v).parse().ok())
        .unwrap_or(0)
}

fn h2_answer(log: &H2Log, s: u32) -> H2Answer {
    let mut a = H2Answer::default();
    for f in &log.frames {
        let stream = match f {
            Frame::Data { stream, .. }
            | Frame::Headers { stream, .. }
            | Frame::Rst { stream, .. }
            | Frame::PushPromise { stream, .. }
            | Frame::BadHeaders { stream, .. }
            | Frame::Priority { stream }
            | Frame::Unknown { stream, .. } => *stream,
            _ => continue,
        };
        if stream != s {
            continue;
        }
        if let (Some(H2End::Stream), Frame::Rst { code, .. }) = (a.end, f) {
            // Legal: the client's side may still be open (RFC 9113 §5.1, half-closed (local));
            // a server that answered before reading the whole request says so (§8.1).
            a.reset_after = Some(*code);
            continue;
        }
        if let Some(end) = a.end {
            a.misplaced.push(format!(
                "{} after the stream ended ({end:?}) (RFC 9113 §5.1)",
                frame_name(f)
            ));
            continue;
        }
        match f {
            Frame::Headers { fields, end, .. } => {
                let status = status_of(fields);
                if a.head.is_none() && (100..200).contains(&status) {
                    a.interim.push(fields.clone());
                    if *end {
                        a.misplaced
                            .push("END_STREAM on an interim head (RFC 9113 §8.1)".into());
                    }
                } else if a.head.is_none() {
                    a.head = Some(fields.clone());
                } else {
                    if !*end {
                        a.misplaced
                            .push("a second field block without END_STREAM (RFC 9113 §8.1)".into());
                    }
                    a.trailers.extend(fields.iter().cloned());
                }
                if *end {
                    a.end = Some(H2End::Stream);
                }
            }
            Frame::Data { data, end, .. } => {
                if a.head.is_none() && !data.is_empty() {
                    a.misplaced
                        .push("DATA before the answer's head (RFC 9113 §8.1)".into());
                }
                a.body.extend_from_slice(data);
                if *end {
                    a.end = Some(H2End::Stream);
                }
            }
            Frame::Rst { code, .. } => a.end = Some(H2End::Reset(*code)),
            Frame::BadHeaders { why, .. } => a
                .misplaced
                .push(format!("a field block that does not decode: {why}")),
            Frame::PushPromise { .. } => a
                .misplaced
                .push("PUSH_PROMISE although the client disabled push (RFC 9113 §8.4)".into()),
            _ => {}
        }
    }
    a
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Data { .. } => "DATA",
        Frame::Headers { .. } => "HEADERS",
        Frame::Priority { .. } => "PRIORITY",
        Frame::Rst { .. } => "RST_STREAM",
        Frame::Settings { .. } => "SETTINGS",
        Frame::PushPromise { .. } => "PUSH_PROMISE",
        Frame::Ping { .. } => "PING",
        Frame::GoAway { .. } => "GOAWAY",
        Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
        Frame::Unknown { .. } => "an unknown frame",
        Frame::BadHeaders { .. } => "an undecodable field block",
    }
}

/// Fields an HTTP/2 message must not carry (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The `:path` each case stream was opened with (filled in).
fn h2_paths(case: &Case, id: usize) -> Vec<(u32, Vec<u8>)> {
    let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
    for step in case.h2.as_deref().unwrap_or_default() {
        if let H2Step::Headers(s, fields, _) = step
            && !out.iter().any(|(o, _)| o == s)
        {
            let path = fields
                .iter()
                .find(|(n, _)| n == b":path")
                .map(|(_, v)| fill(v, id))
                .unwrap_or_default();
            out.push((*s, path));
        }
    }
    out
}

/// The client's side of one HTTP/2 case, normalised as the HTTP/1.1 side is ([`normalised`];
/// also: the connection's housekeeping frames are not compared, nor how a body is cut into
/// DATA frames, nor whether END_STREAM rides on the last DATA frame or an empty one after it),
/// and the absolute checks on it.
fn judge_h2_client(case: &Case, id: usize, t: &Transcript) -> (String, String, Vec<(Abs, String)>) {
    let log = t.h2.as_ref().expect("an HTTP/2 transcript");
    let mut out = String::new();
    let mut coarse = String::new();
    let mut bad: Vec<(Abs, String)> = Vec::new();
    let paths = h2_paths(case, id);
    let reset_by_client: Vec<u32> = case
        .h2
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|step| match step {
            H2Step::Rst(s, _) => Some(*s),
            _ => None,
        })
        .collect();
    let own_case = format!("case {id} ");
    let probe_body = format!("probe {id}\n");
    let mut streams: Vec<(u32, String)> = log
        .opened
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let method = case.methods.get(i).map_or("?", String::as_str);
            (*s, format!("request {i} ({})", esc(method.as_bytes())))
        })
        .collect();
    if let Some(p) = log.probe {
        streams.push((p, "probe".into()));
    }
    for (i, (s, role)) in streams.iter().enumerate() {
        let is_probe = Some(*s) == log.probe;
        let a = h2_answer(log, *s);
        for o in [&mut out, &mut coarse] {
            let _ = writeln!(o, "= stream {s}: {role}");
        }
        for fields in &a.interim {
            let regular: Fields = fields
                .iter()
                .filter(|(n, _)| !n.starts_with(b":"))
                .cloned()
                .collect();
            let (headers, _) = normalised(&regular, true);
            for o in [&mut out, &mut coarse] {
                let _ = writeln!(o, "< {} (interim)", status_of(fields));
                for (k, v) in &headers {
                    let _ = writeln!(o, "<   {k}: {v}");
                }
            }
        }
        if let Some(head) = &a.head {
            let status = status_of(head);
            let regular: Fields = head
                .iter()
                .filter(|(n, _)| !n.starts_with(b":"))
                .cloned()
                .collect();
            let pseudo: Vec<String> = head
                .iter()
                .filter(|(n, _)| n.starts_with(b":") && n != b":status")
                .map(|(n, v)| format!("{}: {}", esc(n), esc(v)))
                .collect();
            let msg = Msg {
                start: 0,
                status,
                line: Vec::new(),
                bare_lf: false,
                headers: regular.clone(),
                framing: if a.end == Some(H2End::Stream) {
                    Framing::Length
                } else {
                    Framing::Truncated
                },
                body: a.body.clone(),
                trailers: a.trailers.clone(),
            };
            let (mut headers, ids) = normalised(&regular, true);
            let (decoded, coding) = decoded_body(&msg);
            if coding.is_some() {
                headers.retain(|(k, _)| k != "content-length" && k != "transfer-encoding");
            }
            let body = replace_all(&decoded, &ids);
            let how = coding.clone().map_or("plain".to_string(), |c| c);
            let _ = writeln!(out, "< {status}");
            for p in &pseudo {
                let _ = writeln!(out, "<   !! pseudo-field {p}");
            }
            for (k, v) in &headers {
                let _ = writeln!(out, "<   {k}: {v}");
            }
            // How much of a body arrived before the client's own reset is timing.
            let body_line = if reset_by_client.contains(s) && a.end != Some(H2End::Stream) {
                "<   body: cut by the client's reset (not compared)".to_string()
            } else {
                format!("<   body ({how}): {}", esc_cap(&body, 120))
            };
            let _ = writeln!(out, "{body_line}");
            for (k, v) in &a.trailers {
                let _ = writeln!(out, "<   trailer {}: {}", esc(k), esc_cap(v, 100));
            }
            if status >= 400 && !has_marker(&decoded) {
                let _ = writeln!(coarse, "< {status} (a page the edge made)");
            } else {
                let _ = writeln!(coarse, "< {status}");
                for (k, v) in &headers {
                    let _ = writeln!(coarse, "<   {k}: {v}");
                }
                let _ = writeln!(coarse, "{body_line}");
                for (k, v) in &a.trailers {
                    let _ = writeln!(coarse, "<   trailer {}: {}", esc(k), esc_cap(v, 100));
                }
            }

            // Crossed: another request's answer on this stream.
            let text = lossy(&decoded);
            if text.contains("STRAY") {
                bad.push((
                    Abs::Crossed,
                    format!("stream {s} got the STRAY response no request asked for"),
                ));
            } else if is_probe {
                if decoded != probe_body.as_bytes() && (status < 400 || has_marker(&decoded)) {
                    bad.push((
                        Abs::Crossed,
                        format!(
                            "the probe got {status} {} instead of its own answer",
                            esc_cap(&decoded, 60)
                        ),
                    ));
                }
            } else {
                let mine = paths
                    .iter()
                    .find(|(p, _)| p == s)
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                let seen = text.split("saw ").nth(1).map(|r| r.trim_end().to_string());
                let other_stream = lossy(&mine).starts_with(&format!("/case/{id}/s"))
                    && seen
                        .as_deref()
                        .is_some_and(|p| p.as_bytes() != mine.as_slice());
                if text.contains("probe ")
                    || text.contains("victim ")
                    || (text.contains("case ") && !text.contains(&own_case))
                    || other_stream
                {
                    bad.push((
                        Abs::Crossed,
                        format!(
                            "stream {s} ({role}) got another request's answer: {}",
                            esc_cap(&decoded, 60)
                        ),
                    ));
                }
            }

            // Unframed: an answer that does not frame itself as HTTP/2 requires.
            let head_request = case.methods.get(i).is_some_and(|m| m == "HEAD") && !is_probe;
            let bodiless = head_request || status == 204 || status == 304;
            for (k, _) in &regular {
                if CONNECTION_SPECIFIC
                    .iter()
                    .any(|c| k.eq_ignore_ascii_case(c.as_bytes()))
                {
                    bad.push((
                        Abs::Unframed,
                        format!("stream {s}: the answer carries `{}`, a connection-specific field (RFC 9113 §8.2.2)", esc(k)),
                    ));
                }
            }
            if bodiless && !a.body.is_empty() {
                bad.push((
                    Abs::Unframed,
                    format!(
                        "stream {s}: DATA on a {status} answer{} (RFC 9110 §6.4.1)",
                        if head_request { " to HEAD" } else { "" }
                    ),
                ));
            }
            let length = regular
                .iter()
                .find(|(k, _)| k == b"content-length")
                .and_then(|(_, v)| lossy(v).parse::<usize>().ok());
            if let Some(n) = length
                && !bodiless
                && a.end == Some(H2End::Stream)
                && n != a.body.len()
            {
                bad.push((
                    Abs::Unframed,
                    format!(
                        "stream {s}: content-length {n} but {} bytes of DATA before END_STREAM (RFC 9113 §8.1.1)",
                        a.body.len()
                    ),
                ));
            }
            if a.end == Some(H2End::Stream)
                && coding.as_deref().is_some_and(|c| c.contains("cut short"))
            {
                bad.push((
                    Abs::Unframed,
                    format!("stream {s}: a compressed body that does not decode whole, ended with END_STREAM"),
                ));
            }
            if case.cut
                && !is_probe
                && a.end == Some(H2End::Stream)
                && (status < 400 || has_marker(&decoded))
            {
                bad.push((
                    Abs::Unframed,
                    format!(
                        "stream {s}: the upstream's answer was cut short or badly framed, yet the stream ended with END_STREAM as if whole (RFC 9113 §8.1: an incomplete message ends with RST_STREAM)"
                    ),
                ));
            }
        } else {
            for o in [&mut out, &mut coarse] {
                let _ = writeln!(o, "< no answer");
            }
        }
        let end = match a.end {
            Some(H2End::Stream) => "END_STREAM".to_string(),
            Some(H2End::Reset(code)) => format!("RST_STREAM {}", h2wire::reason(code)),
            None => "none".to_string(),
        };
        for o in [&mut out, &mut coarse] {
            let _ = writeln!(o, "<   end: {end}");
            // RST_STREAM(NO_ERROR) after a whole answer only asks the client to stop sending
            // (RFC 9113 §8.1), and whether the request's END_STREAM came first is timing.
            if let Some(code) = a.reset_after.filter(|c| *c != 0) {
                let _ = writeln!(o, "<   then: RST_STREAM {}", h2wire::reason(code));
            }
            for m in &a.misplaced {
                let _ = writeln!(o, "<   !! {m}");
            }
        }
        for m in &a.misplaced {
            bad.push((Abs::Unframed, format!("stream {s}: {m}")));
        }
    }
    // Frames on streams the client never opened (the case's hand-made frames aside).
    let known: Vec<u32> = streams
        .iter()
        .map(|(s, _)| *s)
        .chain(log.victims.iter().copied())
        .collect();
    let mut others: Vec<(u32, &'static str)> = Vec::new();
    for f in &log.frames {
        let (stream, what) = match f {
            Frame::Data { stream, .. } => (*stream, "DATA"),
            Frame::Headers { stream, .. } => (*stream, "HEADERS"),
            Frame::Rst { stream, .. } => (*stream, "RST_STREAM"),
            _ => continue,
        };
        if !known.contains(&stream) && !others.contains(&(stream, what)) {
            others.push((stream, what));
            if what != "RST_STREAM" {
                bad.push((
                    Abs::Unframed,
                    format!("{what} on stream {stream}, which no request opened"),
                ));
            }
        }
    }
    let mut end = String::new();
    for (s, what) in &others {
        let _ = writeln!(end, "= stream {s} (not a request's): {what}");
    }
    let _ = writeln!(
        end,
        "-- connection: {}{}; answers: {:?}; probe: {}; end: {}",
        match log.goaway() {
            Some((last, code)) => format!("GOAWAY {} (last stream {last})", h2wire::reason(code)),
            None => "no GOAWAY".into(),
        },
        if log.send_failed {
            "; the client could not send everything"
        } else {
            ""
        },
        t.phase1,
        match log.probe {
            Some(_) => format!("sent, {:?}", t.phase2),
            None => "not sent".into(),
        },
        if t.closed { "closed" } else { "open" }
    );
    out.push_str(&end);
    coarse.push_str(&end);
    for v in t.victims.iter().filter_map(|v| v.as_ref().err()) {
        bad.push((Abs::Crossed, v.clone()));
    }
    (out, coarse, bad)
}

// ---------------------------------------------------------------------------------------------
// Normalising, rendering, judging.
// ---------------------------------------------------------------------------------------------

/// A body decoded by its `Content-Encoding` (codings undone last first), and how it was
/// (`None`: the answer names no coding). Decoding goes as far as the bytes allow: a stream cut
/// short or corrupt keeps what decoded before, and says so.
fn decoded_body(m: &Msg) -> (Vec<u8>, Option<String>) {
    let codings: Vec<String> = m
        .headers
        .iter()
        .filter(|(k, _)| lossy(k).trim().eq_ignore_ascii_case("content-encoding"))
        .flat_map(|(_, v)| {
            lossy(v)
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    if codings.is_empty() || m.framing == Framing::Bodiless {
        return (m.body.clone(), None);
    }
    let mut body = m.body.clone();
    let mut how = Vec::new();
    for coding in codings.iter().rev() {
        match decode(coding, &body) {
            Some((out, true)) => {
                how.push(format!("{coding}-decoded"));
                body = out;
            }
            Some((out, false)) => {
                how.push(format!("{coding}-decoded, cut short or corrupt"));
                body = out;
                break;
            }
            None => {
                how.push(format!("{coding}: not decoded"));
                break;
            }
        }
    }
    (body, Some(how.join(", ")))
}

/// `b` decoded from `coding`: `(bytes, whether the stream was complete and valid)`; `None`: a
/// coding this suite does not decode.
fn decode(coding: &str, b: &[u8]) -> Option<(Vec<u8>, bool)> {
    use std::io::Read;
    let mut reader: Box<dyn Read + '_> = match coding {
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(b)),
        "br" => Box::new(brotli::Decompressor::new(b, 4096)),
        "zstd" => Box::new(zstd::stream::read::Decoder::new(b).ok()?),
        "identity" => return Some((b.to_vec(), true)),
        _ => return None,
    };
    let mut out = Vec::new();
    // Small reads: what decoded before an error is kept.
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Some((out, true)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return Some((out, false)),
        }
    }
}

/// Bytes for a report: printable ASCII as is, the rest escaped.
fn esc(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    s
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, c| {
        (h ^ u64::from(*c)).wrapping_mul(0x100000001b3)
    })
}

/// [`esc`], cut to about `max` characters; a cut value keeps its length and a hash so that
/// comparisons still see every byte.
fn esc_cap(b: &[u8], max: usize) -> String {
    if b.len() <= max {
        return format!("\"{}\"", esc(b));
    }
    format!(
        "\"{}…\" ({} bytes, #{:016x})",
        esc(&b[..max]),
        b.len(),
        fnv(b)
    )
}

/// A request id the edge made up (32 lowercase hex digits): differs on every run.
fn generated_id(v: &[u8]) -> bool {
    v.len() == 32
        && v.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// `127.0.0.1:<port>` → `127.0.0.1:<port>` with the port replaced: the client's source port.
fn without_ports(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(p) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..p + 10]);
        rest = &rest[p + 10..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("<port>");
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// What is normalised, and why (nothing else is):
/// - header names are compared in lowercase (RFC 9110 §5.1: they are case-insensitive) and
///   headers as a multiset — sorted by name, keeping the order of same-named fields (RFC 9110
///   §5.3: only their relative order carries meaning);
/// - `Date` is left out, present or not: its value is the clock, and Pingora adds one to answers
///   that lack it while the fast path passes them as they are (RFC 9110 §6.6.1 asks a forwarding
///   recipient with a clock to add it; reported, not compared);
/// - `Server`/`Via` values (none expected; a product token is not behaviour), `Server-Timing`
///   values (durations);
/// - `Connection: keep-alive` in an answer, when every request of the case is HTTP/1.1: there
///   it is the default (RFC 9112 §9.3) and Pingora says it on every answer, the fast path never
///   (HTTP/1.0 cases keep it: for a 1.0 client it is what keeps the connection open);
/// - `X-Request-Id` values the edge generated (32 random hex digits per request), also where an
///   error page repeats the id in its body;
/// - the client's source port in `X-Forwarded-For`/`Forwarded` (ephemeral, per connection);
/// - a body with a `Content-Encoding` (gzip, br, zstd; codings undone last first) is compared
///   decoded, never as its compressed bytes ([`decoded_body`]): each path flushes its encoder
///   where its reads end (the fast path per read from the upstream, Pingora per body chunk it
///   hands the filter), so the compressed bytes legitimately differ while the content they
///   carry may not. A stream cut short or corrupt is decoded as far as it goes and marked so:
///   both paths must have delivered the same content before the cut. (Chunk boundaries were
///   never compared: chunked bodies are compared dechunked; a chunked body's trailer fields
///   are shown after it, names lowercased.) Everything else about a compressed answer is
///   compared as for any answer: Content-Encoding, Vary, the weakened ETag, Accept-Ranges
///   removed, no Content-Length, `Transfer-Encoding: chunked`.
fn normalised(
    headers: &[(Vec<u8>, Vec<u8>)],
    http11_only: bool,
) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let mut ids = Vec::new();
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, v)| {
            let name = lossy(k).trim().to_ascii_lowercase();
            !(name == "date"
                || (http11_only && name == "connection" && v.eq_ignore_ascii_case(b"keep-alive")))
        })
        .map(|(k, v)| {
            let name = lossy(k).to_ascii_lowercase();
            let value = match name.trim() {
                "server" | "via" => "<product>".to_string(),
                "server-timing" => "<timing>".to_string(),
                "x-request-id" if generated_id(v) => {
                    ids.push(v.clone());
                    "<generated id>".to_string()
                }
                "x-forwarded-for" | "forwarded" => without_ports(&esc(v)),
                _ => esc_cap(v, 100),
            };
            (name, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (out, ids)
}

/// Runs of exactly 32 lowercase hex digits (request ids the edge made) in raw bytes.
fn mask_ids(raw: &[u8]) -> Vec<u8> {
    let hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let run = raw[i..].iter().take_while(|c| hex(c)).count();
        if run == 32 {
            out.extend_from_slice(b"<generated id>");
            i += run;
        } else if run > 0 {
            out.extend_from_slice(&raw[i..i + run]);
            i += run;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

fn replace_all(body: &[u8], ids: &[Vec<u8>]) -> Vec<u8> {
    let mut out = body.to_vec();
    for id in ids {
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(id) {
                next.extend_from_slice(b"<generated id>");
                i += id.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

fn has_marker(body: &[u8]) -> bool {
    let text = lossy(body);
    ["STRAY", "probe ", "victim ", "case ", "hello", "other saw"]
        .iter()
        .any(|m| text.contains(m))
}

/// The client's side of one case, normalised, and the absolute checks on it.
fn judge_client(case: &Case, id: usize, t: &Transcript) -> (String, String, Vec<(Abs, String)>) {
    if case.h2.is_some() {
        return judge_h2_client(case, id, t);
    }
    let mut methods = case.methods.clone();
    if t.probe_at.is_some() {
        methods.push("GET".into());
    }
    let parsed = parse_stream(&t.bytes, &methods, t.closed);
    let http11_only = !case.steps.iter().any(|s| match s {
        Step::Write(b) => b.windows(8).any(|w| w == b"HTTP/1.0"),
        Step::Sleep(_) => false,
    });
    let mut out = String::new();
    // The same, with refusal pages the edge made reduced to their status and Connection header.
    let mut coarse = String::new();
    let mut bad: Vec<(Abs, String)> = Vec::new();
    let n_case = case.methods.len();
    let probe_body = format!("probe {id}\n");
    let own_case = format!("case {id} #");
    let mut final_index = 0;
    for m in &parsed.msgs {
        let (mut headers, ids) = normalised(&m.headers, http11_only);
        // Compressed bodies are compared decoded (see [`normalised`]).
        let (decoded, coding) = decoded_body(m);
        if coding.is_some() {
            // A compressed body may go out with its length (compressed whole, as the fast
            // path does up to 128 KiB) or chunked (as it streams): both frame it exactly, and
            // the absolute checks still see every answer's framing. Compared: the content.
            headers.retain(|(k, _)| k != "content-length" && k != "transfer-encoding");
        }
        let _ = writeln!(
            out,
            "< {}{}",
            esc(&m.line),
            if m.bare_lf {
                "  [bare LF line ends]"
            } else {
                ""
            }
        );
        for (k, v) in &headers {
            let _ = writeln!(out, "<   {k}: {v}");
        }
        let body = replace_all(&decoded, &ids);
        let framing = match &coding {
            Some(c) => format!("framed, {c}"),
            None => format!("{:?}", m.framing),
        };
        let _ = writeln!(out, "<   body ({framing}): {}", esc_cap(&body, 120));
        for (k, v) in &m.trailers {
            let name = lossy(k).to_ascii_lowercase();
            let _ = writeln!(out, "<   trailer {name}: {}", esc_cap(v, 100));
        }
        if m.status >= 400 && !has_marker(&decoded) {
            let _ = writeln!(coarse, "< {} (a page the edge made)", esc(&m.line));
        } else {
            let _ = writeln!(coarse, "< {}", esc(&m.line));
            for (k, v) in &headers {
                let _ = writeln!(coarse, "<   {k}: {v}");
            }
            let _ = writeln!(coarse, "<   body ({framing}): {}", esc_cap(&body, 120));
            for (k, v) in &m.trailers {
                let name = lossy(k).to_ascii_lowercase();
                let _ = writeln!(coarse, "<   trailer {name}: {}", esc_cap(v, 100));
            }
        }
        if m.interim() {
            continue;
        }
        let text = lossy(&decoded);
        let i = final_index;
        final_index += 1;
        if text.contains("STRAY") {
            bad.push((
                Abs::Crossed,
                format!("answer {i} is the STRAY response no request asked for"),
            ));
        } else if i < n_case {
            let foreign = text.contains("probe ")
                || text.contains("victim ")
                || (text.contains("case ") && !text.contains(&own_case));
            if foreign {
                bad.push((
                    Abs::Crossed,
                    format!(
                        "answer {i} belongs to another request: {}",
                        esc_cap(&decoded, 60)
                    ),
                ));
            }
        } else if t.probe_at.is_some() && i == n_case {
            if decoded != probe_body.as_bytes() && (m.status < 400 || has_marker(&decoded)) {
                bad.push((
                    Abs::Crossed,
                    format!(
                        "the probe got {} {} instead of its own answer",
                        m.status,
                        esc_cap(&decoded, 60)
                    ),
                ));
            }
        } else if m.status < 400 || has_marker(&decoded) {
            bad.push((
                Abs::Crossed,
                format!(
                    "answer {i} answers no request sent: {} {}",
                    m.status,
                    esc_cap(&decoded, 60)
                ),
            ));
        }
        if matches!(m.framing, Framing::UntilClose | Framing::Truncated)
            && t.probe_at.is_some_and(|p| m.start < p)
        {
            bad.push((
                Abs::Unframed,
                format!(
                    "answer {i} has no valid length ({:?}), yet the connection stayed open",
                    m.framing
                ),
            ));
        }
    }
    match &parsed.tail {
        Tail::None => {}
        Tail::Incomplete(at) => {
            for o in [&mut out, &mut coarse] {
                let _ = writeln!(o, "<<< incomplete: {}", esc_cap(&t.bytes[*at..], 120));
            }
            if !t.closed && *at < t.bytes.len() {
                bad.push((
                    Abs::Unframed,
                    "an incomplete answer on a connection left open".into(),
                ));
            }
        }
        Tail::Garbage(at, why) => {
            for o in [&mut out, &mut coarse] {
                let _ = writeln!(
                    o,
                    "<<< not an answer ({why}): {}",
                    esc_cap(&t.bytes[*at..], 120)
                );
            }
            if !t.closed || t.probe_at.is_some_and(|p| *at < p) {
                bad.push((
                    Abs::Unframed,
                    format!("bytes that are not a valid answer ({why}) on a connection kept open"),
                ));
            }
        }
    }
    let mut end = String::new();
    let _ = writeln!(
        end,
        "-- answers: {:?}; probe: {}; end: {}",
        t.phase1,
        match t.probe_at {
            Some(_) => format!("sent, {:?}", t.phase2),
            None => "not sent (closed)".into(),
        },
        if t.closed { "closed" } else { "open" }
    );
    out.push_str(&end);
    coarse.push_str(&end);
    for v in t.victims.iter().filter_map(|v| v.as_ref().err()) {
        bad.push((Abs::Crossed, v.clone()));
    }
    (out, coarse, bad)
}

const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// One request as the upstream received it, normalised (see [`normalised`]).
fn render_request(raw: &[u8], out: &mut String) {
    let Some(len) = head_end(raw) else {
        let _ = writeln!(out, ">   unparsed: {}", esc_cap(raw, 200));
        return;
    };
    let head = &raw[..len];
    let bare_lf = head
        .iter()
        .enumerate()
        .any(|(j, c)| *c == b'\n' && (j == 0 || head[j - 1] != b'\r'));
    let (line, headers) = header_lines(head);
    let (headers, _) = normalised(&headers, false);
    let _ = writeln!(
        out,
        "> {}{}",
        esc(&line),
        if bare_lf { "  [bare LF line ends]" } else { "" }
    );
    for (k, v) in headers {
        let _ = writeln!(out, ">   {k}: {v}");
    }
    if len < raw.len() {
        let _ = writeln!(out, ">   body: {}", esc_cap(&mask_ids(&raw[len..]), 120));
    }
}

/// [`render_request`] for a request an HTTP/2 stream became: a chunked body is shown
/// dechunked (the edge writes a chunk per DATA frame it reads, and how the frames were read is
/// timing), with `(incomplete)` when it stops before its last chunk.
fn render_h2_request(raw: &[u8], out: &mut String) {
    let Some(len) = head_end(raw) else {
        return render_request(raw, out);
    };
    let (_, headers) = header_lines(&raw[..len]);
    let chunked = headers.iter().any(|(k, v)| {
        lossy(k).trim().eq_ignore_ascii_case("transfer-encoding")
            && lossy(v).to_ascii_lowercase().contains("chunked")
    });
    if !chunked || len == raw.len() {
        return render_request(raw, out);
    }
    render_request(&raw[..len], out);
    match dechunk(&raw[len..]) {
        Dechunked::Done(n, body, trailers) => {
            let _ = writeln!(out, ">   body (dechunked): {}", esc_cap(&body, 120));
            for (k, v) in trailers {
                let _ = writeln!(out, ">   trailer {}: {}", esc(&k), esc_cap(&v, 100));
            }
            if n < raw.len() - len {
                let rest = &raw[len + n..];
                let _ = writeln!(out, ">   then: {}", esc_cap(rest, 120));
            }
        }
        Dechunked::Need => {
            let body = dechunk_partial(&raw[len..]);
            let _ = writeln!(
                out,
                ">   body (dechunked, incomplete): {}",
                esc_cap(&body, 120)
            );
        }
        Dechunked::Bad(why) => {
            let _ = writeln!(out, ">   body ({why}): {}", esc_cap(&raw[len..], 120));
        }
    }
}

/// The absolute checks on one request the upstream received.
fn judge_request(raw: &[u8], bad: &mut Vec<(Abs, String)>) {
    let Some(len) = head_end(raw) else { return };
    let (line, headers) = header_lines(&raw[..len]);
    let name_is = |k: &[u8], n: &str| lossy(k).trim().eq_ignore_ascii_case(n);
    let lengths: BTreeSet<String> = headers
        .iter()
        .filter(|(k, _)| name_is(k, "content-length"))
        .flat_map(|(_, v)| {
            lossy(v)
                .split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let te = headers.iter().any(|(k, _)| name_is(k, "transfer-encoding"));
    if lengths.len() > 1 {
        bad.push((
            Abs::Smuggled,
            format!(
                "`{}` reached the upstream with Content-Lengths {lengths:?}",
                esc(&line)
            ),
        ));
    }
    if te && !lengths.is_empty() {
        bad.push((
            Abs::Smuggled,
            format!(
                "`{}` reached the upstream with both Content-Length and Transfer-Encoding",
                esc(&line)
            ),
        ));
    }
    for (k, v) in &headers {
        let name = lossy(k).trim().to_ascii_lowercase();
        if FORWARDING.contains(&name.as_str()) && lossy(v).contains("spoof") {
            bad.push((
                Abs::Spoofed,
                format!("the client's `{name}: {}` reached the upstream", esc(v)),
            ));
        }
    }
}

/// The absolute checks on a request an HTTP/2 case sent, as the upstream received it whole.
fn judge_h2_request(case: &Case, raw: &[u8], bad: &mut Vec<(Abs, String)>) {
    let Some(len) = head_end(raw) else { return };
    let (line, headers) = header_lines(&raw[..len]);
    let words: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    if words.len() != 3 || words[2] != b"HTTP/1.1" || words[1].is_empty() {
        // The client sent HTTP/2 frames: whatever else the upstream read as a request, the
        // edge made (stray bytes after a request, read as the next one).
        bad.push((
            Abs::Smuggled,
            format!(
                "the upstream read `{}` as a request: no client sent it",
                esc(&line)
            ),
        ));
    }
    if case.aborted {
        bad.push((
            Abs::Completed,
            format!(
                "`{}` reached the upstream whole, though the client abandoned it",
                esc(&line)
            ),
        ));
    }
    let cookies = headers
        .iter()
        .filter(|(k, _)| lossy(k).trim().eq_ignore_ascii_case("cookie"))
        .count();
    if cookies > 1 {
        bad.push((
            Abs::Cookies,
            format!(
                "`{}` reached the upstream with {cookies} Cookie lines",
                esc(&line)
            ),
        ));
    }
}

/// The upstream's side of one case (its own upstream, and what reached `other.test` for it).
fn judge_upstream(
    case: &Case,
    id: usize,
    own: &Upstream,
    other: &Upstream,
) -> (String, Vec<(Abs, String)>) {
    let mut events: Vec<(Instant, String, Vec<u8>, ReqKind)> = Vec::new();
    for (who, log) in [("", &own.log), ("other.test ", &other.log)] {
        let marker = format!("/case/{id}/");
        for conn in log.lock().expect("log").iter() {
            for (at, range, kind) in &conn.requests {
                let raw = conn.raw[range.clone()].to_vec();
                let ours = who.is_empty() || {
                    let line_end = raw.iter().position(|c| *c == b'\n').unwrap_or(raw.len());
                    lossy(&raw[..line_end]).contains(&marker)
                };
                if *kind != ReqKind::Quiet && ours {
                    events.push((*at, who.to_string(), raw, *kind));
                }
            }
            // The reader records bytes before it parses them: a health probe or warm-up read
            // but not yet parsed when the case is judged is as quiet as a parsed one.
            let rest = &conn.raw[conn.parsed.min(conn.raw.len())..];
            if conn.parsed < conn.raw.len() && who.is_empty() && !is_one_quiet_request(rest) {
                events.push((
                    conn.last,
                    "unparsed ".into(),
                    conn.raw[conn.parsed..].to_vec(),
                    ReqKind::Case,
                ));
            }
        }
    }
    events.sort_by_key(|e| e.0);
    let mut rendered: Vec<String> = Vec::new();
    let mut bad = Vec::new();
    for (_, who, raw, kind) in &events {
        judge_request(raw, &mut bad);
        if *kind == ReqKind::Victim {
            continue; // how victims spread over connections is timing; they are judged alone
        }
        let mut out = String::new();
        if who == "unparsed " && case.h2.is_some() && head_end(raw).is_some() {
            let _ = writeln!(out, "> (left incomplete on a connection)");
            render_h2_request(raw, &mut out);
            rendered.push(out);
            continue;
        }
        if who == "unparsed " {
            let _ = writeln!(
                out,
                "> (left unparsed on a connection) {}",
                esc_cap(&mask_ids(raw), 200)
            );
            rendered.push(out);
            continue;
        }
        if case.h2.is_some() && *kind == ReqKind::Case {
            judge_h2_request(case, raw, &mut bad);
        }
        if !who.is_empty() {
            let _ = writeln!(out, "> [reached {who}]");
        }
        if case.h2.is_some() {
            render_h2_request(raw, &mut out);
        } else {
            render_request(raw, &mut out);
        }
        rendered.push(out);
    }
    // The streams of an HTTP/2 connection are concurrent: the order in which their requests
    // reach the upstream is timing, and is not compared.
    if case.h2.is_some() {
        rendered.sort();
    }
    let mut out = rendered.concat();
    if out.is_empty() {
        out.push_str("> nothing\n");
    }
    (out, bad)
}

// ---------------------------------------------------------------------------------------------
// Reports.
// ---------------------------------------------------------------------------------------------

fn clip(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        format!("{s:<w$}")
    } else {
        let cut: String = s.chars().take(w - 1).collect();
        format!("{cut}…")
    }
}

/// Two texts side by side, lines aligned by their longest common subsequence; `*` marks lines
/// that differ.
fn side_by_side(a: &str, b: &str) -> String {
    let x: Vec<&str> = a.lines().collect();
    let y: Vec<&str> = b.lines().collect();
    let mut lcs = vec![vec![0usize; y.len() + 1]; x.len() + 1];
    for i in (0..x.len()).rev() {
        for j in (0..y.len()).rev() {
            lcs[i][j] = if x[i] == y[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    const W: usize = 78;
    let mut out = format!(
        "    {} | {}\n",
        clip("fast path on", W),
        "SPINFORGE_EDGE_FAST=0"
    );
    let (mut i, mut j) = (0, 0);
    while i < x.len() || j < y.len() {
        if i < x.len() && j < y.len() && x[i] == y[j] {
            let _ = writeln!(out, "    {} | {}", clip(x[i], W), y[j]);
            i += 1;
            j += 1;
        } else if j < y.len() && (i == x.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "  * {} | {}", clip("", W), y[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "  * {} | ", clip(x[i], W));
            i += 1;
        }
    }
    out
}

/// One observed finding.
#[derive(Debug)]
struct Finding {
    case: String,
    check: Check,
    detail: String,
}

// ---------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------

struct Edge {
    _ws: Workspace,
    sf: Spinforge,
    addr: SocketAddr,
    metrics: String,
    upstreams: Vec<Upstream>,
    other: Upstream,
}

/// Every case's recording upstream, and `other.test`'s. Bound before the edges pick their ports
/// (a port `free_port` returned could otherwise be taken by one of these).
async fn bind_upstreams(cases: &[Case]) -> (Vec<Upstream>, Upstream) {
    let mut upstreams = Vec::new();
    for (id, case) in cases.iter().enumerate() {
        upstreams.push(
            start_upstream(Spec {
                id,
                other: false,
                script: case.script.clone(),
            })
            .await,
        );
    }
    let other = start_upstream(Spec {
        id: usize::MAX,
        other: true,
        script: None,
    })
    .await;
    (upstreams, other)
}

async fn start_edge(
    mode: Mode,
    cases: &[Case],
    (upstreams, other): (Vec<Upstream>, Upstream),
) -> Edge {
    let ws = Workspace::new();
    let port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{port}\n  h2c: true\n  grace: 2s\n  metrics: {metrics}\n  max_connections_per_ip: 4096\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n",
        port_block()
    );
    for (id, up) in upstreams.iter().enumerate() {
        let _ = write!(
            yaml,
            "  c{id}:\n    domains: [c{id}.test]\n    upstream: {}\n    health_check: {{ path: {HEALTH} }}\n{}",
            up.addr, cases[id].yaml
        );
    }
    let _ = write!(
        yaml,
        "  other:\n    domains: [other.test]\n    upstream: {}\n    health_check: {{ path: {HEALTH} }}\n",
        other.addr
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let fast = match mode {
        Mode::Fast => "1",
        Mode::Full => "0",
    };
    let (ws, sf) = tokio::task::spawn_blocking(move || {
        let sf = Spinforge::start_env(
            &ws,
            "up",
            &path,
            Some(addr),
            &[("SPINFORGE_EDGE_FAST", fast)],
        );
        (ws, sf)
    })
    .await
    .expect("start spinforge");
    Edge {
        _ws: ws,
        sf,
        addr,
        metrics,
        upstreams,
        other,
    }
}

/// Waits until every app answers through the edge.
async fn warm(edge: &Edge, n: usize) {
    let hosts: Vec<String> = (0..n)
        .map(|id| format!("c{id}.test"))
        .chain(["other.test".to_string()])
        .collect();
    let addr = edge.addr;
    let deadline = Instant::now() + Duration::from_secs(40);
    futures::stream::iter(hosts)
        .for_each_concurrent(32, |host| async move {
            loop {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let req =
                    format!("GET {WARM} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(req.as_bytes()).await;
                let mut got = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await;
                if got.starts_with(b"HTTP/1.1 200") {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{host} was not routed within 40 s: {}",
                    esc_cap(&got, 300)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
}

async fn run_all(edge: &Edge, cases: &Arc<Vec<Case>>) -> Vec<Transcript> {
    let addr = edge.addr;
    futures::stream::iter(0..cases.len())
        .map(|id| {
            let cases = cases.clone();
            async move {
                if cases[id].h2.is_some() {
                    run_h2_case(addr, &cases[id], id).await
                } else {
                    run_case(addr, &cases[id], id).await
                }
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_and_full_paths_treat_requests_and_answers_alike() {
    let started = Instant::now();
    let mut all = request_cases();
    all.extend(answer_cases());
    all.extend(compression_cases());
    let twins = h2_twins(&all);
    all.extend(twins);
    all.extend(h2_request_cases());
    all.extend(h2_answer_cases());
    let names: BTreeSet<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), all.len(), "case names are unique");
    let requests: usize = all
        .iter()
        .filter(|c| c.kind == Kind::Request && c.h2.is_none())
        .map(|c| c.methods.len())
        .sum();
    let answers = all
        .iter()
        .filter(|c| c.kind == Kind::Answer && c.h2.is_none())
        .count();
    let compressed = |kind: Kind| {
        all.iter()
            .filter(|c| c.kind == kind && c.name.starts_with("gz/"))
            .count()
    };
    let h2_count = |kind: Kind| {
        all.iter()
            .filter(|c| c.kind == kind && c.h2.is_some())
            .count()
    };
    let (h2_requests, h2_answers) = (h2_count(Kind::Request), h2_count(Kind::Answer));
    let h2_streams: usize = all
        .iter()
        .filter(|c| c.h2.is_some())
        .map(|c| c.methods.len())
        .sum();
    let (gz_requests, gz_answers) = (compressed(Kind::Request), compressed(Kind::Answer));
    assert!(requests >= 200, "{requests} client requests");
    assert!(answers >= 50, "{answers} upstream answers");
    assert!(
        gz_requests >= 30 && gz_answers >= 80,
        "{gz_requests} + {gz_answers} compression cases"
    );
    assert!(
        h2_requests >= 150 && h2_answers >= 150,
        "{h2_requests} + {h2_answers} HTTP/2 cases"
    );
    let cases = Arc::new(all);

    let fast_upstreams = bind_upstreams(&cases).await;
    let full_upstreams = bind_upstreams(&cases).await;
    let (fast, full) = tokio::join!(
        start_edge(Mode::Fast, &cases, fast_upstreams),
        start_edge(Mode::Full, &cases, full_upstreams)
    );
    tokio::join!(warm(&fast, cases.len()), warm(&full, cases.len()));
    let ready = started.elapsed();
    let (fast_t, full_t) = tokio::join!(run_all(&fast, &cases), run_all(&full, &cases));
    let ran = started.elapsed() - ready;
    // Stray bytes and late requests land before the logs are read.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The fast edge used its fast path, the other did not.
    let fast_served = |text: &str| {
        support::metric_value(text, "spinforge_fast_path_requests_total").unwrap_or(0.0)
    };
    let fast_metrics = support::scrape(&fast.metrics).await;
    let full_metrics = support::scrape(&full.metrics).await;
    assert!(
        fast_served(&fast_metrics) > 100.0,
        "the fast edge served {} requests on its fast path",
        fast_served(&fast_metrics)
    );
    assert_eq!(fast_served(&full_metrics), 0.0, "SPINFORGE_EDGE_FAST=0");

    let mut findings: Vec<Finding> = Vec::new();
    for (id, case) in cases.iter().enumerate() {
        let mut side = |edge: &Edge, t: &Transcript, mode: Mode| {
            let (client, coarse, mut bad) = judge_client(case, id, t);
            let (upstream, up_bad) = judge_upstream(case, id, &edge.upstreams[id], &edge.other);
            bad.extend(up_bad);
            let checks: BTreeSet<Abs> = bad.iter().map(|(a, _)| *a).collect();
            for abs in checks {
                let mut detail = String::new();
                for (_, d) in bad.iter().filter(|(a, _)| *a == abs) {
                    let _ = writeln!(detail, "    {d}");
                }
                let _ = write!(
                    detail,
                    "  what the client got ({mode:?}):\n{client}  what the upstream got ({mode:?}):\n{upstream}"
                );
                findings.push(Finding {
                    case: case.name.clone(),
                    check: Check::Abs(abs, mode),
                    detail,
                });
            }
            (client, coarse, upstream)
        };
        let (fast_client, fast_coarse, fast_up) = side(&fast, &fast_t[id], Mode::Fast);
        let (full_client, full_coarse, full_up) = side(&full, &full_t[id], Mode::Full);
        if fast_up != full_up {
            findings.push(Finding {
                case: case.name.clone(),
                check: Check::Upstream,
                detail: side_by_side(&fast_up, &full_up),
            });
        }
        if fast_client != full_client {
            findings.push(Finding {
                case: case.name.clone(),
                check: if fast_coarse == full_coarse {
                    Check::ErrorPage
                } else {
                    Check::Client
                },
                detail: side_by_side(&fast_client, &full_client),
            });
        }
        if std::env::var("DIFF_SHOW").is_ok_and(|v| case.name.starts_with(&v)) {
            eprintln!(
                "=== {} (c{id}.test)\n--- upstream\n{}\n--- client\n{}",
                case.name,
                side_by_side(&fast_up, &full_up),
                side_by_side(&fast_client, &full_client)
            );
        }
    }

    // Sort the findings into allowed, known and unexpected.
    let mut report = String::new();
    let (mut unexpected, mut known, mut allowed) = (0, 0, 0);
    let mut known_seen = vec![false; KNOWN_BUGS.len()];
    let mut known_text = String::new();
    let mut allowed_text = String::new();
    let verbose = std::env::var_os("DIFF_VERBOSE").is_some();
    for f in &findings {
        if let Some(a) = ALLOWED
            .iter()
            .find(|a| a.check == f.check && matches(a.case, &f.case))
        {
            allowed += 1;
            let _ = writeln!(
                allowed_text,
                "  allowed: {} {:?} — {}",
                f.case, f.check, a.why
            );
        } else if let Some(i) = KNOWN_BUGS
            .iter()
            .position(|k| k.check == f.check && matches(k.case, &f.case))
        {
            known += 1;
            known_seen[i] = true;
            let k = &KNOWN_BUGS[i];
            let _ = writeln!(
                known_text,
                "  known bug (finding {}): {} {:?} — {}",
                k.finding, f.case, f.check, k.what
            );
            if verbose {
                let _ = writeln!(known_text, "{}", f.detail);
            }
        } else {
            unexpected += 1;
            let _ = writeln!(
                report,
                "\nUNEXPECTED {} — {:?}\n{}",
                f.case, f.check, f.detail
            );
        }
    }
    let stale: Vec<&Known> = KNOWN_BUGS
        .iter()
        .zip(&known_seen)
        .filter(|(_, seen)| !**seen)
        .map(|(k, _)| k)
        .collect();
    for k in &stale {
        let _ = writeln!(
            report,
            "\nNO LONGER SEEN (finding {}): {} {:?} — {}; remove it from KNOWN_BUGS",
            k.finding, k.case, k.check, k.what
        );
    }
    eprintln!(
        "differential: {} cases: {} HTTP/1.1 request cases ({requests} client requests), {answers} upstream answers \
         (compression: {gz_requests} Accept-Encoding cases, {gz_answers} answers); HTTP/2: {h2_requests} request cases, \
         {h2_answers} upstream answers, {h2_streams} streams; edges ready in {:.1}s, cases ran in {:.1}s; {} findings: {allowed} allowed, {known} known bugs, \
         {unexpected} unexpected; {} known bugs no longer seen",
        cases.len(),
        cases.len() - answers - h2_requests - h2_answers,
        ready.as_secs_f64(),
        ran.as_secs_f64(),
        findings.len(),
        stale.len()
    );
    eprintln!("{known_text}{allowed_text}");
    // Stop both edges before failing: their logs are long and say nothing the report does not.
    drop(
        tokio::task::spawn_blocking(move || {
            drop(fast.sf);
            drop(full.sf);
        })
        .await,
    );
    assert!(
        unexpected == 0 && stale.is_empty(),
        "the two paths differ beyond ALLOWED and KNOWN_BUGS:\n{report}"
    );
}

/// The frame-level HTTP/2 client on a real HTTP/2 server (the `h2` crate's, in this process):
/// what the server writes decodes (HPACK with Huffman codes and the dynamic table, CONTINUATION,
/// padding-free DATA under flow control), what the client writes the server reads (a field
/// block split over CONTINUATION, a body larger than the server's window); and the HTTP/2
/// judges catch what each check is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_client_and_judges_work() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut conn = h2::server::handshake(tcp).await.expect("handshake");
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let (parts, mut body) = request.into_parts();
                let mut got = 0usize;
                while let Some(Ok(d)) = body.data().await {
                    let _ = body.flow_control().release_capacity(d.len());
                    got += d.len();
                }
                let mut answer = http::Response::builder()
                    .status(201)
                    .header("x-method", parts.method.as_str())
                    .header("x-path", parts.uri.to_string())
                    .header("x-got", got.to_string())
                    .header("x-a", parts.headers["x-a"].clone())
                    .header("x-big-len", parts.headers["x-big"].len().to_string())
                    .header("set-cookie", "a=1")
                    .header("set-cookie", "b=2")
                    .header("x-long", "~".repeat(20_000))
                    .body(())
                    .expect("response");
                answer.headers_mut().append(
                    "x-bytes",
                    http::HeaderValue::from_bytes(b"caf\xe9 \x7e").expect("value"),
                );
                let mut send = respond.send_response(answer, false).expect("send");
                let mut data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
                while !data.is_empty() {
                    send.reserve_capacity(data.len());
                    let n = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(n)) => n,
                        _ => return,
                    };
                    let rest = data.split_off(n.min(data.len()));
                    let last = rest.is_empty();
                    let _ = send.send_data(data.into(), last);
                    data = rest;
                }
            });
        }
    });
    let mut c = h2wire::Client::connect(addr, &[], 1 << 20)
        .await
        .expect("connect");
    let big = "b".repeat(20_000);
    let mut log = H2Log::default();
    for s in [1u32, 3] {
        let fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a.test"),
            (":path", "/p?q=1"),
            ("x-a", "one two"),
            ("x-big", big.as_str()),
        ];
        c.headers(s, &fields, false).await.expect("headers");
        c.data(s, &vec![7u8; 100_000], true).await.expect("data");
        log.opened.push(s);
        let stop = h2_read(&mut c, &mut log, after(Duration::from_secs(10)), |l| {
            l.done(s)
        })
        .await;
        assert_eq!(stop, Stop::Complete, "stream {s}: {:?}", log.frames);
        let a = h2_answer(&log, s);
        let head = a.head.expect("a head");
        let get = |n: &str| -> Vec<Vec<u8>> {
            head.iter()
                .filter(|(k, _)| k == n.as_bytes())
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(status_of(&head), 201);
        assert_eq!(get("x-method"), vec![b"POST".to_vec()]);
        assert_eq!(get("x-path"), vec![b"http://a.test/p?q=1".to_vec()]);
        assert_eq!(get("x-got"), vec![b"100000".to_vec()]);
        assert_eq!(get("x-a"), vec![b"one two".to_vec()]);
        assert_eq!(get("x-big-len"), vec![b"20000".to_vec()]);
        assert_eq!(get("set-cookie"), vec![b"a=1".to_vec(), b"b=2".to_vec()]);
        assert_eq!(get("x-long"), vec![vec![b'~'; 20_000]]);
        assert_eq!(get("x-bytes"), vec![b"caf\xe9 \x7e".to_vec()]);
        let want: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert!(a.body == want, "stream {s}: {} bytes", a.body.len());
        assert_eq!(a.end, Some(H2End::Stream));
        assert!(a.misplaced.is_empty(), "{:?}", a.misplaced);
    }
    // Huffman decoding on its own: RFC 7541 C.4.1.
    assert_eq!(
        support::h2wire::huffman_decode(&[
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff
        ]),
        Ok(b"www.example.com".to_vec())
    );

    // The judges, on made-up frames.
    let abs = |case: &Case, frames: Vec<Frame>| -> Vec<Abs> {
        let t = Transcript {
            bytes: Vec::new(),
            probe_at: None,
            phase1: Stop::Complete,
            phase2: Stop::Complete,
            closed: false,
            victims: Vec::new(),
            h2: Some(H2Log {
                frames,
                opened: vec![1],
                probe: Some(3),
                victims: Vec::new(),
                send_failed: false,
            }),
        };
        let (_, _, bad) = judge_h2_client(case, 7, &t);
        bad.into_iter().map(|(a, _)| a).collect()
    };
    let head = |status: &str, extra: &[(&str, &str)], end: bool| Frame::Headers {
        stream: 1,
        fields: std::iter::once(field(":status", status))
            .chain(extra.iter().map(|(n, v)| field(n, v)))
            .collect(),
        end,
    };
    let data = |stream: u32, d: &str, end: bool| Frame::Data {
        stream,
        data: d.as_bytes().to_vec(),
        end,
    };
    let probe = || {
        vec![
            Frame::Headers {
                stream: 3,
                fields: vec![field(":status", "200")],
                end: false,
            },
            data(3, "probe 7\n", true),
        ]
    };
    let get = Case::h2("t", h2_get(&[]));
    let with = |mut first: Vec<Frame>| {
        first.extend(probe());
        first
    };
    let good = with(vec![
        head("200", &[("content-length", "5")], false),
        data(1, "hello", true),
    ]);
    assert_eq!(abs(&get, good.clone()), Vec::<Abs>::new());
    // A length the DATA does not meet, ended as if whole.
    let short = with(vec![
        head("200", &[("content-length", "9")], false),
        data(1, "hello", true),
    ]);
    assert_eq!(abs(&get, short), vec![Abs::Unframed]);
    // A cut upstream answer ended with END_STREAM; the same reset is fine.
    let mut cut = get.clone();
    cut.cut = true;
    assert_eq!(abs(&cut, good.clone()), vec![Abs::Unframed]);
    let reset = with(vec![
        head("200", &[], false),
        Frame::Rst { stream: 1, code: 2 },
    ]);
    assert_eq!(abs(&cut, reset), Vec::<Abs>::new());
    // DATA on a HEAD answer; a connection-specific field; DATA after the end.
    let head_case = Case::h2("t", vec![H2Step::Headers(1, h2_head("HEAD", &[]), true)]);
    let body_on_head = with(vec![head("200", &[], false), data(1, "hello", true)]);
    assert_eq!(abs(&head_case, body_on_head), vec![Abs::Unframed]);
    let hop = with(vec![head("200", &[("connection", "close")], true)]);
    assert_eq!(abs(&get, hop), vec![Abs::Unframed]);
    let late = with(vec![head("200", &[], true), data(1, "x", false)]);
    assert_eq!(abs(&get, late), vec![Abs::Unframed]);
    // Another request's answer: the stray one, the probe's, another stream's.
    let stray = with(vec![head("200", &[], false), data(1, "STRAY\n", true)]);
    assert_eq!(abs(&get, stray), vec![Abs::Crossed]);
    let mut swapped = vec![head("200", &[], false), data(1, "probe 7\n", true)];
    swapped.extend([
        Frame::Headers {
            stream: 3,
            fields: vec![field(":status", "200")],
            end: false,
        },
        data(3, "case 7 saw /case/7/\n", true),
    ]);
    assert_eq!(abs(&get, swapped), vec![Abs::Crossed, Abs::Crossed]);
    let two = Case::h2(
        "t",
        vec![H2Step::Headers(
            1,
            with_pseudo(h2_head("GET", &[]), &[(":path", Some("$Ps0"))]),
            true,
        )],
    );
    let other = with(vec![
        head("200", &[], false),
        data(1, "case 7 saw /case/7/s1\n", true),
    ]);
    assert_eq!(abs(&two, other), vec![Abs::Crossed]);
    let own = with(vec![
        head("200", &[], false),
        data(1, "case 7 saw /case/7/s0\n", true),
    ]);
    assert_eq!(abs(&two, own), Vec::<Abs>::new());
    // A compressed body cut short, ended as if whole.
    let gz = gzipped(b"hello hello hello");
    let mut cut_gz = with(vec![head("200", &[("content-encoding", "gzip")], false)]);
    cut_gz.insert(
        1,
        Frame::Data {
            stream: 1,
            data: gz[..gz.len() - 6].to_vec(),
            end: true,
        },
    );
    assert_eq!(abs(&get, cut_gz), vec![Abs::Unframed]);

    // What an HTTP/2 case's request looks like at the upstream.
    let judged = |case: &Case, raw: &str| -> Vec<Abs> {
        let mut bad = Vec::new();
        judge_h2_request(case, raw.as_bytes(), &mut bad);
        bad.into_iter().map(|(a, _)| a).collect()
    };
    assert_eq!(
        judged(&get, "GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
        Vec::<Abs>::new()
    );
    assert_eq!(judged(&get, "0\r\n\r\n"), vec![Abs::Smuggled]);
    assert_eq!(
        judged(&get, "GET / HTTP/1.1\r\ncookie: a=1\r\ncookie: b=2\r\n\r\n"),
        vec![Abs::Cookies]
    );
    let mut aborted = get.clone();
    aborted.aborted = true;
    assert_eq!(
        judged(
            &aborted,
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello"
        ),
        vec![Abs::Completed]
    );
    // A twin says over HTTP/2 what its HTTP/1.1 case said, and knows a cut answer.
    let twin = h2_twin(&Case::answer(
        "ans/x",
        "POST",
        vec![
            send("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello"),
            Act::Close,
        ],
    ))
    .expect("a twin");
    assert!(twin.cut);
    assert_eq!(twin.name, "h2/ans/x");
    let Some(
        [
            H2Step::Headers(1, fields, false),
            H2Step::Data(1, body, true),
        ],
    ) = twin.h2.as_deref()
    else {
        panic!("{:?}", twin.h2);
    };
    assert_eq!(
        fields,
        &vec![
            field(":method", "POST"),
            field(":scheme", "http"),
            field(":authority", "$H"),
            field(":path", "$P"),
            field("content-length", "5"),
        ]
    );
    assert_eq!(body, b"hello");
    assert!(!answer_cut(&Case::answer(
        "t",
        "GET",
        vec![send("HTTP/1.1 200 OK\r\n\r\nhello"), Act::Close]
    )));
    assert!(answer_cut(&Case::answer(
        "t",
        "GET",
        vec![
            send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n"),
            Act::Close
        ]
    )));
    assert!(matches(
        "h2/body/*empty-data*",
        "h2/body/post-no-cl-empty-data-end"
    ));
    assert!(!matches("h2/body/*empty-data*", "h2/body/post-cl"));
}

/// The judges themselves, on made-up transcripts: each absolute check catches what it is for
/// (today's edge may no longer produce these, so the suite alone would not show it).
#[test]
fn the_checks_catch_what_they_are_for() {
    let transcript = |bytes: &[u8], probe_at: Option<usize>, closed: bool| Transcript {
        bytes: bytes.to_vec(),
        probe_at,
        phase1: Stop::Complete,
        phase2: Stop::Complete,
        closed,
        victims: Vec::new(),
        h2: None,
    };
    let abs = |case: &Case, t: &Transcript| -> Vec<Abs> {
        let (_, _, bad) = judge_client(case, 7, t);
        bad.into_iter().map(|(a, _)| a).collect()
    };
    let get = Case::answer("t", "GET", Vec::new());
    let probe_answer = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nprobe 7\n";

    // Finding 2: the probe gets the stray answer (and its own answer comes after it).
    let answer = "HTTP/1.1 204 No Content\r\n\r\n";
    let bytes = format!("{answer}{STRAY}{probe_answer}");
    let t = transcript(bytes.as_bytes(), Some(answer.len()), false);
    assert_eq!(abs(&get, &t), vec![Abs::Crossed, Abs::Crossed]);
    // The same exchange, answered right: nothing.
    let bytes = format!("{answer}{probe_answer}");
    let t = transcript(bytes.as_bytes(), Some(answer.len()), false);
    assert_eq!(abs(&get, &t), Vec::<Abs>::new());
    // A victim that got someone else's answer.
    let mut t = transcript(bytes.as_bytes(), Some(answer.len()), false);
    t.victims
        .push(Err("victim 3 got 200 \"probe 7\\n\"".into()));
    assert_eq!(abs(&get, &t), vec![Abs::Crossed]);

    // Finding 3: an answer with no length on a connection that stays open. Once it closes, the
    // probe's answer was read as part of the first body ("the next response glued to hello"):
    // crossed too. While it stays open, the client is still reading that body.
    let answer = "HTTP/1.1 200 OK\r\n\r\nhello";
    let bytes = format!("{answer}{probe_answer}");
    let t = transcript(bytes.as_bytes(), Some(answer.len()), true);
    assert_eq!(abs(&get, &t), vec![Abs::Crossed, Abs::Unframed]);
    let t = transcript(bytes.as_bytes(), Some(answer.len()), false);
    assert_eq!(abs(&get, &t), vec![Abs::Unframed]);
    // Without a probe (the edge closed after the answer): fine.
    let t = transcript(answer.as_bytes(), None, true);
    assert_eq!(abs(&get, &t), Vec::<Abs>::new());
    // Invalid chunk framing passed on, on a connection kept open.
    let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n";
    let bytes = format!("{answer}{probe_answer}");
    let t = transcript(bytes.as_bytes(), Some(answer.len()), false);
    assert_eq!(abs(&get, &t), vec![Abs::Unframed]);
    // A HEAD answer's length frames nothing.
    let head = Case::answer("t", "HEAD", Vec::new());
    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let bytes = format!("{answer}{probe_answer}");
    let t = transcript(bytes.as_bytes(), Some(answer.len()), false);
    assert_eq!(abs(&head, &t), Vec::<Abs>::new());

    // A compressed answer is read decoded: another request's answer inside it is caught, and
    // a stream cut short says so.
    let gz = gzipped(STRAY.as_bytes());
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    answer.extend_from_slice(&gz);
    let t = transcript(&answer, None, true);
    assert_eq!(abs(&get, &t), vec![Abs::Crossed]);
    let parsed = parse_stream(&answer, &["GET".to_string()], true);
    assert_eq!(
        decoded_body(&parsed.msgs[0]),
        (STRAY.as_bytes().to_vec(), Some("gzip-decoded".to_string()))
    );
    let cut = &answer[..answer.len() - 10];
    let parsed = parse_stream(cut, &["GET".to_string()], true);
    assert_eq!(
        decoded_body(&parsed.msgs[0]).1.as_deref(),
        Some("gzip-decoded, cut short or corrupt")
    );
    for coding in ["br", "zstd", "identity"] {
        let text = text(3000);
        let coded = match coding {
            "br" => brotlied(&text),
            "zstd" => zstd::encode_all(&text[..], 3).expect("zstd"),
            _ => text.clone(),
        };
        assert_eq!(decode(coding, &coded), Some((text, true)), "{coding}");
    }
    assert_eq!(decode("compress", b"x"), None);

    // What reached the upstream.
    let judged = |raw: &str| -> Vec<Abs> {
        let mut bad = Vec::new();
        judge_request(raw.as_bytes(), &mut bad);
        bad.into_iter().map(|(a, _)| a).collect()
    };
    let plain = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(judged(plain), Vec::<Abs>::new());
    assert_eq!(
        judged("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        vec![Abs::Smuggled]
    );
    assert_eq!(
        judged("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n"),
        vec![Abs::Smuggled]
    );
    assert_eq!(
        judged("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
        vec![Abs::Smuggled]
    );
    assert_eq!(
        judged("GET / HTTP/1.1\r\nX-Real-IP: spoof\r\nForwarded: for=spoof\r\n\r\n"),
        vec![Abs::Spoofed, Abs::Spoofed]
    );

    // The client's reading of chunked bodies is strict, the upstream's lenient.
    assert!(matches!(
        dechunk(b"5 \r\nhello\r\n0\r\n\r\n"),
        Dechunked::Bad(_)
    ));
    assert!(matches!(dechunk(b"5\nhello\n0\n\n"), Dechunked::Bad(_)));
    assert!(matches!(
        dechunk(b"5 ;a=b\r\nhello\r\n0\r\nX: 1\r\n\r\nrest"),
        Dechunked::Done(n, ref body, ref trailers)
            if n == 26 && body == b"hello" && trailers == &vec![(b"X".to_vec(), b"1".to_vec())]
    ));
    assert_eq!(
        lenient_chunked_len(b"5 \r\nhello\r\n0\r\n\r\n"),
        Ok(Some(16))
    );
    assert_eq!(dechunk_partial(b"5\r\nhe"), b"he");
    assert_eq!(
        fill(b"GET $P HTTP/1.1\r\nHost: $H\r\nX-N: $N\r\n", 12),
        b"GET /case/12/ HTTP/1.1\r\nHost: c12.test\r\nX-N: 12\r\n"
    );
}
