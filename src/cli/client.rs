//! The admin API as the CLI sees it: requests with the token, problems turned into errors that
//! carry the exit code, and Server-Sent Events.

use super::Failure;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use std::time::Duration;

#[derive(Debug)]
pub struct Client {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// From `SPINFORGE_ADMIN_URL` (default http://127.0.0.1:9000) and `SPINFORGE_TOKEN`.
    pub fn from_env() -> Result<Client, Failure> {
        let base = std::env::var("SPINFORGE_ADMIN_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "http://127.0.0.1:9000".into());
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(Failure::usage(format!(
                "SPINFORGE_ADMIN_URL={base} is not an http:// or https:// URL"
            )));
        }
        let token = std::env::var("SPINFORGE_TOKEN")
            .ok()
            .filter(|s| !s.is_empty());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Failure::unreachable(format!("cannot set up an HTTP client: {e}")))?;
        Ok(Client { base, token, http })
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// Sends, and turns a transport error or a problem answer into a [`Failure`].
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Response, Failure> {
        let resp = req.send().await.map_err(|e| {
            // With its causes: reqwest's own message names only the outermost ("error sending
            // request"), not why (refused, a certificate, a timeout).
            let cause = format!("{:#}", anyhow::Error::new(e));
            let hint = if cause.contains("certificate") {
                "its certificate is not trusted here: add its CA to the system's roots, or name a \
                 file of trusted roots in SSL_CERT_FILE"
            } else {
                "is SpinForge running there? (SPINFORGE_ADMIN_URL)"
            };
            Failure::unreachable(format!(
                "cannot reach the admin API at {} ({cause}); {hint}",
                self.base
            ))
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(problem(resp).await)
    }

    /// A GET with a short deadline, parsed as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, Failure> {
        let resp = self
            .send(
                self.request(Method::GET, path)
                    .timeout(Duration::from_secs(30)),
            )
            .await?;
        resp.json()
            .await
            .map_err(|e| Failure::failed(format!("GET {path}: the answer is not JSON: {e}")))
    }

    /// A call with a JSON body (or none), its answer parsed as JSON (`null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut req = self.request(method, path).timeout(Duration::from_secs(60));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = self.send(req).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::failed(format!("{path}: {e}")))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::failed(format!("{path}: the answer is not JSON: {e}")))
    }
}

/// A non-2xx answer as a failure: the problem's detail, and an exit code by status.
pub async fn problem(resp: Response) -> Failure {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            let mut d = v.get("detail")?.as_str()?.to_string();
            if let Some(errors) = v.get("errors").and_then(Value::as_array) {
                for e in errors {
                    match e.get("text").and_then(Value::as_str) {
                        // A config file's error, as `spinforge check` prints it.
                        Some(text) => {
                            d.push('\n');
                            d.push_str(text);
                        }
                        None => d.push_str(&format!(
                            "\n  line {}: {}: {}",
                            e["line"],
                            e["key"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )),
                    }
                }
            }
            Some(d)
        })
        .unwrap_or_else(|| text.trim().to_string());
    let message = format!("{status}: {detail}");
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Failure::unreachable(format!(
            "{message} (set SPINFORGE_TOKEN to the admin token)"
        )),
        _ => Failure::failed(message),
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default)]
pub struct Event {
    /// The `event:` field; `None` for a plain message.
    pub name: Option<String>,
    pub data: String,
}

/// Reads events from a `text/event-stream` answer (framing by the `eventsource-stream` crate,
/// as the WHATWG spec reads it) and hands each to `on_event`, which says whether to go on.
/// Returns when the stream ends.
pub async fn read_events(
    resp: Response,
    mut on_event: impl FnMut(Event) -> bool,
) -> Result<(), Failure> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let mut events = resp.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event =
            event.map_err(|e| Failure::unreachable(format!("the event stream broke off: {e}")))?;
        let name = (event.event != "message").then_some(event.event);
        if !on_event(Event {
            name,
            data: event.data,
        }) {
            return Ok(());
        }
    }
    Ok(())
}
