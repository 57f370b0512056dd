//! `spinforge deploy DIR|GIT_URL --app NAME [--domain D]...`: create the app if needed, upload
//! the packed folder (with a progress bar on a terminal) or name the git URL, stream the build
//! log, and end with the app's URL.

use super::client::{Client, problem, read_events};
use super::{Failure, app_name};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{IsTerminal, Seek, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// A source folder, or a git URL (https://, ssh://, git@host:path, with an optional #ref).
    source: String,
    /// The app to deploy to.
    #[arg(long)]
    app: String,
    /// A domain for a new app (repeatable); default `<app>.localhost`.
    #[arg(long = "domain")]
    domains: Vec<String>,
}

fn is_git_url(s: &str) -> bool {
    ["http://", "https://", "git://", "ssh://", "file://"]
        .iter()
        .any(|p| s.starts_with(p))
        || s.starts_with("git@")
}

pub async fn run(client: &Client, args: DeployArgs) -> Result<(), Failure> {
    app_name(&args.app)?;
    let app = &args.app;
    let upload = if is_git_url(&args.source) {
        None
    } else {
        let dir = PathBuf::from(&args.source);
        if !dir.is_dir() {
            return Err(Failure::usage(format!(
                "{} is not a folder or a git URL",
                args.source
            )));
        }
        Some(dir)
    };
    let view = ensure_app(client, app, &args.domains).await?;

    let resp = match upload {
        Some(dir) => {
            let archive = tokio::task::spawn_blocking(move || -> Result<_, Failure> {
                let mut file = tempfile::tempfile()
                    .map_err(|e| Failure::failed(format!("cannot create a temporary file: {e}")))?;
                let files = super::pack::pack(&dir, &file).map_err(|e| {
                    Failure::failed(format!("cannot pack {}: {e:#}", dir.display()))
                })?;
                let size = file
                    .seek(std::io::SeekFrom::End(0))
                    .and_then(|n| file.rewind().map(|_| n))
                    .map_err(|e| Failure::failed(format!("temporary file: {e}")))?;
                Ok((file, files, size))
            })
            .await
            .map_err(|e| Failure::failed(format!("packing failed: {e}")))??;
            let (file, files, size) = archive;
            eprintln!("packed {files} files ({})", human(size));
            let body = progress_body(tokio::fs::File::from_std(file), size);
            client
                .send(
                    client
                        .request(Method::POST, &format!("/api/v1/apps/{app}/deploy"))
                        .header("content-type", "application/gzip")
                        .header("content-length", size)
                        .body(body),
                )
                .await?
        }
        None => {
            client
                .send(
                    client
                        .request(Method::POST, &format!("/api/v1/apps/{app}/deploy"))
                        .json(&json!({ "source": args.source })),
                )
                .await?
        }
    };
    let answer: Value = resp
        .json()
        .await
        .map_err(|e| Failure::failed(format!("the deploy answer is not JSON: {e}")))?;
    let Some(build) = answer["build"].as_str() else {
        return Err(Failure::failed(format!(
            "the deploy answer has no build id: {answer}"
        )));
    };
    eprintln!("build {build}");

    // The build log, as it is written, until the build ends.
    let resp = client
        .send(client.request(Method::GET, &format!("/api/v1/builds/{build}/log?follow=1")))
        .await?;
    let mut end: Option<Value> = None;
    read_events(resp, |ev| {
        if ev.name.as_deref() == Some("end") {
            end = serde_json::from_str(&ev.data).ok();
            return false;
        }
        println_safe(&ev.data);
        true
    })
    .await?;
    let end = match end {
        Some(e) => e,
        None => client.get_json(&format!("/api/v1/builds/{build}")).await?,
    };
    match end["state"].as_str() {
        Some("succeeded") => {}
        Some(state) => {
            return Err(Failure::failed(format!(
                "build {build} {state}{}",
                end["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        }
        None => return Err(Failure::failed(format!("build {build}: no final state"))),
    }
    let domains: Vec<String> = view["domains"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    println_safe(&format!("deployed {app} release {}", end["release"]));
    match domains.first() {
        Some(d) => println_safe(&url(d)),
        None => println_safe(&format!("{app} has no domain")),
    }
    Ok(())
}

/// A line on stdout, control characters shown (build output is the app's).
fn println_safe(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", super::terminal::visible(s));
    let _ = out.flush();
}

/// `https://` unless the name never gets a certificate (`*.localhost`, IP addresses).
fn url(domain: &str) -> String {
    let plain = domain == "localhost"
        || domain.ends_with(".localhost")
        || domain.parse::<std::net::IpAddr>().is_ok();
    format!("{}://{domain}/", if plain { "http" } else { "https" })
}

/// The app's view, creating it (with `domains`, default `<app>.localhost`) when it is missing.
async fn ensure_app(client: &Client, app: &str, domains: &[String]) -> Result<Value, Failure> {
    let path = format!("/api/v1/apps/{app}");
    let resp = client
        .request(Method::GET, &path)
        .send()
        .await
        .map_err(|e| {
            Failure::unreachable(format!(
                "cannot reach the admin API at {} ({e}); is SpinForge running there? (SPINFORGE_ADMIN_URL)",
                client.base
            ))
        })?;
    if resp.status().is_success() {
        let view: Value = resp
            .json()
            .await
            .map_err(|e| Failure::failed(format!("GET {path}: {e}")))?;
        let have: Vec<&str> = view["domains"]
            .as_array()
            .map(|d| d.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(d) = domains.iter().find(|d| !have.contains(&d.as_str())) {
            eprintln!(
                "note: app {app} exists with domains [{}]; --domain {d} is not added (change the app's definition for that)",
                have.join(", ")
            );
        }
        return Ok(view);
    }
    if resp.status() != StatusCode::NOT_FOUND {
        return Err(problem(resp).await);
    }
    let domains: Vec<String> = if domains.is_empty() {
        vec![format!("{app}.localhost")]
    } else {
        domains.to_vec()
    };
    eprintln!("creating app {app} ({})", domains.join(", "));
    client
        .call(Method::PUT, &path, Some(json!({ "domains": domains })))
        .await
}

/// The upload body: the file in chunks, drawing a progress bar on stderr when it is a terminal.
fn progress_body(file: tokio::fs::File, size: u64) -> reqwest::Body {
    use tokio::io::AsyncReadExt;
    let tty = std::io::stderr().is_terminal();
    let stream =
        futures::stream::unfold((file, 0u64, false), move |(mut f, sent, done)| async move {
            if done {
                return None;
            }
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) => {
                    if tty {
                        eprintln!();
                    }
                    None
                }
                Ok(n) => {
                    buf.truncate(n);
                    let sent = sent + n as u64;
                    if tty {
                        bar(sent, size);
                    }
                    Some((Ok::<_, std::io::Error>(buf), (f, sent, false)))
                }
                Err(e) => Some((Err(e), (f, sent, true))),
            }
        });
    reqwest::Body::wrap_stream(stream)
}

fn bar(sent: u64, size: u64) {
    const WIDTH: u64 = 30;
    let size = size.max(1);
    let filled = (sent * WIDTH / size).min(WIDTH) as usize;
    eprint!(
        "\ruploading [{}{}] {:>3}% {}/{}",
        "#".repeat(filled),
        " ".repeat(WIDTH as usize - filled),
        sent * 100 / size,
        human(sent),
        human(size)
    );
}

fn human(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
    }
}
