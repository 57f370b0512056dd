//! Uploaded `.tar.gz` sources: streamed to `data_dir/uploads/` under a size cap, then checked by
//! unpacking them with the builder's own extractor (`spinforge_unpack`, through
//! `build::source::extract_tarball`: written beneath a directory handle, never through a link; no
//! absolute paths, `..`, links out of the root, hard links to anything but a file inside,
//! devices, decompression bombs, or more than the size limit unpacked) before the supervisor sees
//! them. Anything refused is removed: a hostile upload leaves nothing behind.

use crate::Ctx;
use crate::problem::Problem;
use crate::router::{Req, too_large};
use http::StatusCode;
use http_body_util::BodyExt;
use spinforge_supervisor::build::BuildError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// An upload must keep arriving: a gap longer than this ends it.
const STALL: Duration = Duration::from_secs(30);
/// Checked uploads kept per app (the newest); older ones were built already or never will be.
const KEEP_PER_APP: usize = 3;

/// Removes what a crash in the middle of an upload left behind.
pub(crate) fn clean_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            let p = e.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}

/// Deletes its paths when dropped, unless kept: a refused or abandoned upload never stays.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

/// Receives, checks and keeps an upload; returns the archive's path.
pub(crate) async fn receive(ctx: &Ctx, app: &str, req: Req) -> Result<PathBuf, Problem> {
    let limit = ctx.max_upload.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(crate::router::refuse(req, upload_too_large(limit)).await);
        }
    }
    let dir = ctx.data_dir.join("uploads");
    let id = format!(
        "{app}-{}-{:08x}",
        spinforge_state::now_ms(),
        fastrand::u32(..)
    );
    let partial = dir.join(format!(".{id}.partial"));
    let check = dir.join(format!(".{id}.check"));
    let mut cleanup = Cleanup(vec![partial.clone(), check.clone()]);

    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| internal(format!("cannot create {}: {e}", partial.display())))?;
    let mut body = req.into_body();
    let mut received: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(STALL, body.frame()).await {
            Err(_) => {
                return Err(Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the upload stalled for {}s", STALL.as_secs()),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Problem::bad_request(format!("the upload broke off: {e}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > limit {
            crate::router::drain(&mut body).await;
            return Err(upload_too_large(limit));
        }
        file.write_all(&data)
            .await
            .map_err(|e| internal(format!("cannot write the upload: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| internal(format!("cannot write the upload: {e}")))?;
    drop(file);
    if received == 0 {
        return Err(Problem::bad_request("the upload is empty: send a .tar.gz"));
    }

    // Unpacking it is the check: the same code, with the same limits, as the build will run.
    let (archive, scratch) = (partial.clone(), check.clone());
    let checked = tokio::task::spawn_blocking(move || {
        spinforge_supervisor::build::source::extract_tarball(&archive, &scratch, limit)
    })
    .await
    .map_err(|e| internal(format!("the upload check failed: {e}")))?;
    if let Err(e) = checked {
        let why = e
            .to_string()
            .replace(&partial.display().to_string(), "the upload");
        let status = match e {
            // Our disk, not the upload: say so rather than blame the archive.
            BuildError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ if why.contains("unpacks to more than") => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        return Err(Problem::new(status, why));
    }
    let kept = dir.join(format!("{id}.tar.gz"));
    std::fs::rename(&partial, &kept)
        .map_err(|e| internal(format!("cannot keep the upload: {e}")))?;
    cleanup.0 = vec![check];
    drop(cleanup);
    prune(&dir, app);
    Ok(kept)
}

fn upload_too_large(limit: u64) -> Problem {
    let mut p = too_large(limit);
    p.detail =
        format!("the upload is larger than {limit} bytes (supervisor.builds.max_archive_size)");
    p
}

fn internal(detail: String) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
}

/// Keeps the newest [`KEEP_PER_APP`] uploads of `app`.
fn prune(dir: &Path, app: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{app}-");
    let mut mine: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&prefix)?.strip_suffix(".tar.gz")?;
            // `<ms>-<random>`: an app whose name extends this one's (`app-x`) does not parse.
            let (ms, random) = rest.split_once('-')?;
            (random.len() == 8 && !random.contains('-')).then_some(())?;
            Some((ms.parse().ok()?, e.path()))
        })
        .collect();
    mine.sort();
    let excess = mine.len().saturating_sub(KEEP_PER_APP);
    for (_, p) in mine.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
}
