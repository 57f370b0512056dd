//! Spinlet logs: `data_dir/logs/<app>.log`, written by the spinlets themselves.
//!
//! A spinlet's stdout and stderr are the log file, opened `O_APPEND` by the supervisor and
//! inherited: the supervisor is not in the write path, so a spinlet keeps logging (and never
//! blocks on a full pipe) while the supervisor restarts. A background task rotates a file that
//! passed `supervisor.logs.max_size` copytruncate-style (copy to `<app>.log.1`, older ones shifted
//! up to `.keep`, then truncate in place — the writers' `O_APPEND` offsets follow). Lines written
//! between the copy and the truncate are lost; that is copytruncate's price for not having to
//! reopen files in processes we do not control.

use crate::build::runner::RunAs;
use spinforge_state::config::LogLimits;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the rotator looks at file sizes.
const ROTATE_EVERY: Duration = Duration::from_secs(1);
/// Reading backwards from the end in blocks of this size.
const BLOCK: u64 = 8192;
/// [`tail`] never reads more than this from a file (a log of one endless line).
const MAX_TAIL_BYTES: u64 = 1 << 20;

/// `logs/<app>.log` under `data_dir`.
pub fn path(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("logs").join(format!("{app}.log"))
}

/// Opens (creating) an app's log for appending: mode 0600, owned by the app's user, in a logs
/// folder only the supervisor can enter (spinlets write through the inherited descriptor).
pub fn open_append(log: &Path, owner: Option<RunAs>) -> std::io::Result<File> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
        if owner.is_some() {
            crate::users::hand_over(dir, None, 0o700)?;
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)?;
    if owner.is_some() {
        crate::users::hand_over(log, owner, 0o600)?;
    }
    Ok(file)
}

/// The last `lines` lines of `log` (fewer if it is shorter), read backwards from its end.
pub fn tail(log: &Path, lines: usize) -> std::io::Result<Vec<String>> {
    let mut f = File::open(log)?;
    let len = f.metadata()?.len();
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    // Enough when the part read holds `lines` newlines beyond a possible trailing one.
    while pos > 0 && len - pos < MAX_TAIL_BYTES {
        let step = BLOCK.min(pos);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0u8; step as usize];
        f.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if body.iter().filter(|&&b| b == b'\n').count() >= lines {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    // The first line may be cut when we stopped before the file's start.
    let complete = if pos > 0 {
        &all[1.min(all.len())..]
    } else {
        &all[..]
    };
    Ok(complete[complete.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect())
}

/// The last `lines` lines of an app's log joined with ` | ` (empty when there is none), for
/// crash reasons.
pub async fn tail_joined(data_dir: &Path, app: &str, lines: usize) -> String {
    let log = path(data_dir, app);
    tokio::task::spawn_blocking(move || tail(&log, lines).unwrap_or_default().join(" | "))
        .await
        .unwrap_or_default()
}

/// Rotates `log` if it has reached `limits.max_size`. True when it did.
pub fn rotate_if_needed(log: &Path, limits: &LogLimits) -> std::io::Result<bool> {
    let size = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size < limits.max_size {
        return Ok(false);
    }
    let numbered = |n: usize| {
        let mut name = log.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if limits.keep > 0 {
        let _ = std::fs::remove_file(numbered(limits.keep));
        for n in (1..limits.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        // The copy keeps the original's owner and mode (0600).
        let to = numbered(1);
        std::fs::copy(log, &to)?;
        let meta = std::fs::metadata(log)?;
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::chown(&to, Some(meta.uid()), Some(meta.gid()));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)?
        .set_len(0)?;
    Ok(true)
}

/// Every second, rotates the spinlet logs (`*.log`) in `dir` that reached the cap.
pub fn spawn_rotator(
    dir: PathBuf,
    limits: tokio::sync::watch::Receiver<LogLimits>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ROTATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let dir = dir.clone();
            // The limits current now: a reload changes them.
            let limits = *limits.borrow();
            let _ = tokio::task::spawn_blocking(move || rotate_all(&dir, &limits)).await;
        }
    })
}

fn rotate_all(dir: &Path, limits: &LogLimits) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") && p.is_file() {
            match rotate_if_needed(&p, limits) {
                Ok(true) => tracing::debug!(log = %p.display(), "log rotated"),
                Ok(false) => {}
                Err(e) => tracing::warn!(log = %p.display(), error = %e, "cannot rotate log"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_reads_the_last_lines() {
        let tmp = tempfile::tempdir().expect("tmp");
        let log = tmp.path().join("a.log");
        let mut f = open_append(&log, None).expect("open");
        for i in 0..5000 {
            writeln!(f, "line {i}").expect("write");
        }
        assert_eq!(
            tail(&log, 3).expect("tail"),
            vec!["line 4997", "line 4998", "line 4999"]
        );
        assert_eq!(tail(&log, 5000).expect("tail").len(), 5000);
        assert_eq!(tail(&log, 6000).expect("tail")[0], "line 0");
        // No trailing newline: the last (partial) line counts.
        write!(f, "partial").expect("write");
        assert_eq!(tail(&log, 2).expect("tail"), vec!["line 4999", "partial"]);
        let empty = tmp.path().join("e.log");
        std::fs::write(&empty, "").expect("write");
        assert!(tail(&empty, 5).expect("tail").is_empty());
        // A line longer than a block.
        let long = "x".repeat(20_000);
        let l = tmp.path().join("l.log");
        std::fs::write(&l, format!("first\n{long}\nlast\n")).expect("write");
        assert_eq!(
            tail(&l, 2).expect("tail"),
            vec![long.clone(), "last".into()]
        );
    }

    #[test]
    fn rotation_keeps_n_files_and_writers_go_on() {
        let tmp = tempfile::tempdir().expect("tmp");
        let log = tmp.path().join("app.log");
        let limits = LogLimits {
            max_size: 1000,
            keep: 2,
        };
        let mut writer = open_append(&log, None).expect("open");
        for round in 0..4 {
            writer
                .write_all(format!("{round}").repeat(1200).as_bytes())
                .expect("write");
            assert!(rotate_if_needed(&log, &limits).expect("rotate"));
            assert_eq!(std::fs::metadata(&log).expect("meta").len(), 0);
        }
        assert!(
            !rotate_if_needed(&log, &limits).expect("rotate"),
            "below the cap"
        );
        let read = |n: &str| std::fs::read_to_string(tmp.path().join(n)).expect(n);
        assert_eq!(read("app.log.1"), "3".repeat(1200), "newest first");
        assert_eq!(read("app.log.2"), "2".repeat(1200));
        assert!(!tmp.path().join("app.log.3").exists(), "only `keep` files");
        // The O_APPEND writer continues at the new end, not at its old offset (no hole).
        writer.write_all(b"after\n").expect("write");
        assert_eq!(read("app.log"), "after\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(tmp.path().join("app.log.1"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "rotated copies stay private");
    }

    #[test]
    fn keep_zero_only_truncates() {
        let tmp = tempfile::tempdir().expect("tmp");
        let log = tmp.path().join("app.log");
        std::fs::write(&log, "y".repeat(5000)).expect("write");
        let limits = LogLimits {
            max_size: 4096,
            keep: 0,
        };
        assert!(rotate_if_needed(&log, &limits).expect("rotate"));
        assert!(!tmp.path().join("app.log.1").exists());
        assert_eq!(std::fs::metadata(&log).expect("meta").len(), 0);
    }
}
