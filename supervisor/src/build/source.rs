//! Sources: a local folder copied, a git repository cloned shallowly at a ref, or a `.tar.gz`
//! unpacked — refusing entries that escape the root, links out of it, device files and archives
//! over the size limit. Each gives an identity (tree checksum, commit, archive checksum) that
//! tells whether the newest release already is this source.

use super::BuildError;
use super::runner::Runner;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Entries never copied from a source folder.
pub const SKIPPED: &[&str] = &["node_modules", ".git"];
/// Entries an archive may hold at most.
const MAX_ENTRIES: u64 = 200_000;

/// A checksum of every file's relative path and content (symlinks by target), skipping
/// [`SKIPPED`].
pub fn checksum_tree(root: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    walk(root, Path::new(""), &mut files)?;
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for rel in files {
        let path = root.join(&rel);
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update(&[0]);
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            hasher.update(std::fs::read_link(&path)?.to_string_lossy().as_bytes());
        } else {
            hasher.update_reader(std::fs::File::open(&path)?)?;
        }
        hasher.update(&[0]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// blake3 of a file's bytes.
pub fn checksum_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let rel = rel.join(&name);
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(root, &rel, out)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.push(rel);
        }
    }
    Ok(())
}

/// Copies a source folder (without [`SKIPPED`]) into `to`.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut files = Vec::new();
    walk(from, Path::new(""), &mut files)?;
    std::fs::create_dir_all(to)?;
    for rel in files {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Copies a tree with hard links for files (symlinks as links): fast, and shares no directory,
/// so files added or removed in one copy never show in the other.
pub fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type()?;
        if ft.is_dir() {
            link_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Clones `url` at `reference` (branch, tag or commit; `None`: the default branch) into `into`
/// with history depth 1, and returns the commit. `.git` is removed afterwards.
pub async fn git_clone(
    runner: &Runner,
    git: &Path,
    url: &str,
    shown_url: &str,
    reference: Option<&str>,
    into: &Path,
) -> Result<String, BuildError> {
    std::fs::create_dir_all(into).map_err(super::io(format!("creating {}", into.display())))?;
    let env = [("GIT_TERMINAL_PROMPT", "0"), ("GIT_CONFIG_NOSYSTEM", "1")];
    runner.log.line(format!(
        "[spinforge] fetching {shown_url}{}",
        reference.map(|r| format!(" at {r}")).unwrap_or_default()
    ));
    let quiet = [
        "-c",
        "advice.detachedHead=false",
        "-c",
        "init.defaultBranch=main",
    ];
    let mut init = quiet.to_vec();
    init.extend(["init", "-q", "."]);
    runner.run(git, &init, into, &env).await?;
    // The URL may hold a token: pass it to git, never to the log.
    let mut remote = quiet.to_vec();
    remote.extend(["remote", "add", "origin", url]);
    run_quiet(
        runner,
        git,
        &remote,
        into,
        &env,
        "git remote add origin <url>",
    )
    .await?;
    let mut fetch = quiet.to_vec();
    fetch.extend([
        "fetch",
        "-q",
        "--depth",
        "1",
        "origin",
        reference.unwrap_or("HEAD"),
    ]);
    runner.run(git, &fetch, into, &env).await?;
    let mut checkout = quiet.to_vec();
    checkout.extend(["checkout", "-q", "--detach", "FETCH_HEAD"]);
    runner.run(git, &checkout, into, &env).await?;
    let head = std::fs::read_to_string(into.join(".git/FETCH_HEAD"))
        .map_err(super::io("reading FETCH_HEAD"))?;
    let commit: String = head.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    if commit.len() < 40 {
        return Err(BuildError::Source(format!(
            "git fetched no commit for {shown_url}"
        )));
    }
    std::fs::remove_dir_all(into.join(".git")).map_err(super::io("removing .git"))?;
    runner.log.line(format!("[spinforge] commit {commit}"));
    Ok(commit)
}

/// A command whose argv must not reach the log (it holds a URL that may carry a token).
async fn run_quiet(
    runner: &Runner,
    program: &Path,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
    shown: &str,
) -> Result<(), BuildError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(runner.env.iter().map(|(k, v)| (k, v)))
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(user) = runner.run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    let status = tokio::time::timeout_at(runner.deadline, cmd.status())
        .await
        .map_err(|_| BuildError::TimedOut {
            limit: runner.limit,
        })?
        .map_err(super::io(format!("running {shown}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Source(format!("`{shown}` failed ({status})")))
    }
}

/// Unpacks a `.tar.gz` into `into` (created), refusing anything unsafe; a single top-level
/// folder holding everything is unwrapped.
pub fn extract_tarball(archive: &Path, into: &Path, max_bytes: u64) -> Result<(), BuildError> {
    let shown = archive.display().to_string();
    let refuse = |why: String| BuildError::Source(format!("refusing {shown}: {why}"));
    // First pass: check every entry before anything is written.
    let open = || -> Result<tar::Archive<flate2::read::GzDecoder<std::fs::File>>, BuildError> {
        let file = std::fs::File::open(archive).map_err(super::io(format!("opening {shown}")))?;
        Ok(tar::Archive::new(flate2::read::GzDecoder::new(file)))
    };
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    let mut tops = std::collections::BTreeSet::new();
    let mut top_is_dir = true;
    {
        let mut ar = open()?;
        let entries = ar
            .entries()
            .map_err(|e| refuse(format!("not a .tar.gz archive ({e})")))?;
        for entry in entries {
            let entry = entry.map_err(|e| refuse(format!("unreadable archive ({e})")))?;
            count += 1;
            if count > MAX_ENTRIES {
                return Err(refuse(format!("more than {MAX_ENTRIES} entries")));
            }
            let path = entry
                .path()
                .map_err(|e| refuse(format!("an entry with an unreadable name ({e})")))?
                .into_owned();
            let name = path.display().to_string();
            let rel = safe_relative(&path).ok_or_else(|| {
                refuse(format!("entry `{name}` points outside the archive's root"))
            })?;
            let kind = entry.header().entry_type();
            use tar::EntryType as T;
            match kind {
                T::Regular | T::Continuous | T::GNUSparse => {
                    total = total.saturating_add(entry.header().size().unwrap_or(u64::MAX));
                    if total > max_bytes {
                        return Err(refuse(format!(
                            "it unpacks to more than {} MiB (supervisor.builds.max_archive_size)",
                            max_bytes >> 20
                        )));
                    }
                }
                T::Directory => {}
                T::Symlink | T::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| {
                            refuse(format!("link `{name}` has an unreadable target ({e})"))
                        })?
                        .ok_or_else(|| refuse(format!("link `{name}` has no target")))?
                        .into_owned();
                    let resolved = if kind == T::Symlink {
                        if target.is_absolute() {
                            None
                        } else {
                            safe_relative(&rel.parent().unwrap_or(Path::new("")).join(&target))
                        }
                    } else {
                        safe_relative(&target)
                    };
                    if resolved.is_none() {
                        return Err(refuse(format!(
                            "link `{name}` points outside the archive's root (to `{}`)",
                            target.display()
                        )));
                    }
                }
                T::Char | T::Block | T::Fifo => {
                    return Err(refuse(format!(
                        "entry `{name}` is a device or FIFO; an app's source holds files, folders and links"
                    )));
                }
                T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
                other => {
                    return Err(refuse(format!(
                        "entry `{name}` has an unsupported type ({other:?})"
                    )));
                }
            }
            let mut comps = rel.components();
            if let Some(first) = comps.next() {
                tops.insert(first.as_os_str().to_owned());
                if comps.next().is_none() && kind != T::Directory {
                    top_is_dir = false;
                }
            }
        }
    }
    // `app/package.json`, `app/src/...`: unwrap `app/`.
    let strip = if tops.len() == 1 && top_is_dir {
        tops.into_iter().next()
    } else {
        None
    };
    std::fs::create_dir_all(into).map_err(super::io(format!("creating {}", into.display())))?;
    let mut ar = open()?;
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let entries = ar
        .entries()
        .map_err(|e| refuse(format!("not a .tar.gz archive ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(format!("unreadable archive ({e})")))?;
        let path = entry
            .path()
            .map_err(|e| refuse(format!("unreadable name ({e})")))?
            .into_owned();
        let Some(rel) = safe_relative(&path) else {
            return Err(refuse(format!(
                "entry `{}` points outside the archive's root",
                path.display()
            )));
        };
        if rel.as_os_str().is_empty() {
            continue; // `./`, the root itself (`tar -C dir .` writes it)
        }
        let rel = match &strip {
            Some(top) => match rel.strip_prefix(top) {
                Ok(r) if r.as_os_str().is_empty() => continue,
                Ok(r) => r.to_path_buf(),
                Err(_) => rel,
            },
            None => rel,
        };
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Link {
            // Hard links name their target from the archive root: map it like the entry.
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .and_then(|t| safe_relative(&t))
                .ok_or_else(|| refuse(format!("bad hard link `{}`", path.display())))?;
            let target = match &strip {
                Some(top) => target
                    .strip_prefix(top)
                    .map(Path::to_path_buf)
                    .unwrap_or(target),
                None => target,
            };
            let dst = into.join(&rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(super::io("creating a folder"))?;
            }
            let src = into.join(&target);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(|e| {
                    refuse(format!(
                        "hard link `{}` to a missing file ({e})",
                        path.display()
                    ))
                })?;
            }
            continue;
        }
        let dst = into.join(&rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(super::io("creating a folder"))?;
            // Never write through a link placed by an earlier entry.
            let canon = parent
                .canonicalize()
                .map_err(super::io("resolving a folder"))?;
            let root = into
                .canonicalize()
                .map_err(super::io("resolving the root"))?;
            if !canon.starts_with(&root) {
                return Err(refuse(format!(
                    "entry `{}` would be written through a link out of the root",
                    path.display()
                )));
            }
        }
        entry
            .unpack(&dst)
            .map_err(|e| refuse(format!("cannot unpack `{}` ({e})", path.display())))?;
    }
    Ok(())
}

/// `path` as a plain relative path that stays inside the root (`a/./b` → `a/b`, `a/../b` → `b`);
/// `None` for absolute paths or ones that climb above the root.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Reads at most `limit` bytes of a small text file.
pub fn read_small(path: &Path, limit: u64) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Tar = tar::Builder<flate2::write::GzEncoder<std::fs::File>>;
    type Case = (&'static str, Box<dyn Fn(&mut Tar)>);

    fn tarball(
        dir: &Path,
        build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>),
    ) -> PathBuf {
        let path = dir.join("src.tar.gz");
        let file = std::fs::File::create(&path).expect("create");
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        build(&mut b);
        b.into_inner().expect("finish").finish().expect("gz");
        path
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// A raw name, bypassing the tar crate's own checks (a hostile archive does not use them).
    fn raw(h: &mut tar::Header, name: &str) {
        let bytes = name.as_bytes();
        let gnu = h.as_gnu_mut().expect("gnu");
        gnu.name = [0; 100];
        gnu.name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
    }

    fn file(
        b: &mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>,
        name: &str,
        body: &[u8],
    ) {
        let mut h = header(tar::EntryType::Regular, body.len() as u64);
        raw(&mut h, name);
        b.append(&h, body).expect("append");
    }

    #[test]
    fn unpacks_and_unwraps_one_top_folder() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = tarball(d.path(), |b| {
            file(b, "app/package.json", b"{}");
            file(b, "app/src/a.js", b"1");
        });
        let out = d.path().join("out");
        extract_tarball(&t, &out, 1 << 20).expect("extract");
        assert!(out.join("package.json").is_file());
        assert!(out.join("src/a.js").is_file());
    }

    #[test]
    fn refuses_hostile_archives() {
        let cases: Vec<Case> = vec![
            (
                "outside the archive's root",
                Box::new(|b| file(b, "../evil.js", b"x")),
            ),
            (
                "outside the archive's root",
                Box::new(|b| file(b, "/etc/evil", b"x")),
            ),
            (
                "outside the archive's root",
                Box::new(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    raw(&mut h, "link");
                    h.set_link_name("../../etc").expect("link");
                    h.set_cksum();
                    b.append(&h, &[][..]).expect("append");
                }),
            ),
            (
                "outside the archive's root",
                Box::new(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    raw(&mut h, "abs");
                    h.set_link_name("/etc/passwd").expect("link");
                    h.set_cksum();
                    b.append(&h, &[][..]).expect("append");
                }),
            ),
            (
                "device",
                Box::new(|b| {
                    let mut h = header(tar::EntryType::Char, 0);
                    raw(&mut h, "null");
                    b.append(&h, &[][..]).expect("append");
                }),
            ),
            (
                "more than",
                Box::new(|b| file(b, "big.bin", &vec![0u8; 2 << 20])),
            ),
        ];
        for (want, build) in cases {
            let d = tempfile::tempdir().expect("tempdir");
            let t = tarball(d.path(), |b| build(b));
            let out = d.path().join("out");
            let err = extract_tarball(&t, &out, 1 << 20)
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "{err}");
            assert!(!d.path().join("evil.js").exists());
            assert!(
                std::fs::read_dir(&out)
                    .map(|mut r| r.next().is_none())
                    .unwrap_or(true),
                "nothing is written before the archive is checked"
            );
        }
    }
}
