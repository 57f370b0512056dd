//! HTTP/2 through the edge's own front end (over TLS by ALPN, and h2c with prior knowledge),
//! with a real client (reqwest/hyper) and the Node echo app: request bodies with and without a
//! length, large answers under flow control, compressed answers, many streams at once, the
//! edge's own pages, and what reaches the app.

mod support;

use std::time::Duration;
use support::eventually;
use support::free_port;
use support::spinforge::{Spinforge, Workspace, echo_app, port_block};

struct Edge {
    _sf: Spinforge,
    https: u16,
    http: u16,
}

fn up(ws: &Workspace) -> Edge {
    let (http, https) = (free_port(), free_port());
    let apps = echo_app(ws, "alpha", "alpha.localhost", "");
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{http}\n  listen_https: 127.0.0.1:{https}\n  h2c: true\n  metrics: off\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{apps}",
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let sf = Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], http).into()));
    Edge {
        _sf: sf,
        https,
        http,
    }
}

/// An HTTP/2 client for `alpha.localhost` over TLS (the edge's self-signed certificate for
/// `*.localhost` is accepted) or h2c.
fn client(edge: &Edge, tls: bool) -> (reqwest::Client, String) {
    let port = if tls { edge.https } else { edge.http };
    let builder = reqwest::Client::builder()
        .resolve("alpha.localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(20))
        .no_gzip()
        .no_brotli()
        .no_deflate();
    let builder = if tls {
        builder.danger_accept_invalid_certs(true)
    } else {
        builder.http2_prior_knowledge()
    };
    let scheme = if tls { "https" } else { "http" };
    (
        builder.build().expect("client"),
        format!("{scheme}://alpha.localhost:{port}"),
    )
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_carry_bodies_compressed_answers_and_the_edges_rules() {
    let ws = Workspace::new();
    let edge = up(&ws);
    for tls in [true, false] {
        let (http, base) = client(&edge, tls);
        let kind = if tls { "h2" } else { "h2c" };
        let first = eventually(
            Duration::from_secs(30),
            format!("{kind}: the app answers"),
            || {
                let (http, base) = (http.clone(), base.clone());
                async move {
                    let r = http.get(format!("{base}/hello")).send().await.ok()?;
                    (r.status() == 200).then_some(r)
                }
            },
        )
        .await;
        assert_eq!(first.version(), reqwest::Version::HTTP_2, "{kind}");
        assert!(first.headers().get("x-request-id").is_some(), "{kind}");
        let seen: serde_json::Value = first.json().await.expect("echo json");
        assert_eq!(seen["path"], "/hello");
        let port = if tls { edge.https } else { edge.http };
        assert_eq!(
            seen["host"],
            format!("alpha.localhost:{port}"),
            "{kind}: :authority is the app's Host"
        );
        assert_eq!(
            seen["forwarded_proto"],
            if tls { "https" } else { "http" },
            "{kind}"
        );
        assert_eq!(seen["forwarded_for"], "127.0.0.1", "{kind}");

        // A client's forwarding claims never reach the app.
        let r = http
            .get(format!("{base}/claims"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .send()
            .await
            .expect("request");
        let seen: serde_json::Value = r.json().await.expect("json");
        assert_eq!(seen["forwarded_for"], "127.0.0.1", "{kind}");
        assert_eq!(seen["headers"]["forwarded"], serde_json::Value::Null);
        assert_eq!(seen["headers"]["x-real-ip"], serde_json::Value::Null);

        // Request bodies: with a length, and streamed without one (chunked to the app).
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let r = http
            .post(format!("{base}/body"))
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200, "{kind}");
        let got: serde_json::Value = r.json().await.expect("json");
        assert_eq!(got["n"], body.len(), "{kind}");
        assert_eq!(got["sha256"], sha256_hex(&body), "{kind}");
        assert_eq!(got["content_length"], body.len().to_string());
        let parts: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(70_000).map(|c| Ok(c.to_vec())).collect();
        let stream = reqwest::Body::wrap_stream(futures::stream::iter(parts));
        let r = http
            .post(format!("{base}/body"))
            .body(stream)
            .send()
            .await
            .expect("streamed post");
        let (status, h) = (r.status(), format!("{:?}", r.headers()));
        let text = r.text().await.unwrap_or_default();
        let got: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{kind}: {status} {h} {text:?}: {e}"));
        assert_eq!(got["n"], body.len(), "{kind}");
        assert_eq!(got["sha256"], sha256_hex(&body), "{kind}");
        assert_eq!(got["transfer_encoding"], "chunked", "{kind}");

        // A large answer, under flow control, whole; and a chunked one.
        for chunked in ["0", "1"] {
            let r = http
                .get(format!("{base}/text?n=700000&chunked={chunked}"))
                .send()
                .await
                .expect("large");
            let status = r.status();
            if status != 200 {
                let h = format!("{:?}", r.headers());
                panic!(
                    "{kind}: {status} {h} {}",
                    r.text().await.unwrap_or_default()
                );
            }
            assert_eq!(r.headers().get("content-encoding"), None);
            let text = r.bytes().await.expect("body");
            assert_eq!(text.len(), 700_000, "{kind} chunked={chunked}");
            assert!(text.starts_with(b"spinforge spinforge"));
        }

        // Compressed: whole (with its length) and streamed (chunked upstream).
        for (path, whole) in [("/text?n=20000", true), ("/text?n=20000&chunked=1", false)] {
            let r = http
                .get(format!("{base}{path}"))
                .header("accept-encoding", "gzip")
                .send()
                .await
                .expect("compressed");
            assert_eq!(r.headers()["content-encoding"], "gzip", "{kind} {path}");
            assert_eq!(r.headers()["vary"], "Accept-Encoding");
            assert_eq!(
                r.headers().get("content-length").is_some(),
                whole,
                "{kind} {path}: a whole body is sent with its length"
            );
            let bytes = r.bytes().await.expect("body");
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
                .expect("gunzip");
            assert_eq!(text.len(), 20_000, "{kind} {path}");
        }

        // Many streams at once on one connection.
        let many = (0..60).map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http
                    .get(format!("{base}/s/{i}"))
                    .send()
                    .await
                    .expect("stream");
                let seen: serde_json::Value = r.json().await.expect("json");
                assert_eq!(
                    seen["path"],
                    format!("/s/{i}"),
                    "each stream gets its own answer"
                );
            }
        });
        futures::future::join_all(many).await;

        // The edge's own page for an unknown host (h2c: over TLS, a name without a
        // certificate fails its handshake, by design).
        if tls {
            continue;
        }
        let (other, _) = {
            let b = reqwest::Client::builder()
                .resolve("nobody.localhost", ([127, 0, 0, 1], port).into())
                .timeout(Duration::from_secs(10));
            let b = if tls {
                b.danger_accept_invalid_certs(true)
            } else {
                b.http2_prior_knowledge()
            };
            (b.build().expect("client"), ())
        };
        let scheme = if tls { "https" } else { "http" };
        let r = other
            .get(format!("{scheme}://nobody.localhost:{port}/"))
            .header("accept", "application/json")
            .send()
            .await
            .expect("unknown host");
        assert_eq!(r.status(), 404, "{kind}");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let page: serde_json::Value = r.json().await.expect("problem json");
        assert_eq!(page["status"], 404);
    }
}
