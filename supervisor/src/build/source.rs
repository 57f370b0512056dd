//! Sources: a local folder copied, a git repository cloned shallowly at a ref, or a `.tar.gz`
//! unpacked. Every untrusted tree is written by [`spinforge_unpack`] (beneath a directory handle,
//! never through a link; entries that escape the root, links out of it, devices and archives over
//! the limits refused). Each source gives an identity (tree checksum, commit, archive checksum)
//! that tells whether the newest release already is this source.

use super::BuildError;
use super::runner::Runner;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Entries never copied from a source folder.
pub const SKIPPED: &[&str] = &["node_modules", ".git"];

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

/// Copies a source folder (without [`SKIPPED`]) into `to`, through [`spinforge_unpack`]: no
/// symlink is read through, and one that points outside the folder refuses the copy (a release
/// must not carry a way out of itself).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    spinforge_unpack::copy_tree(from, to, SKIPPED).map_err(refusing(from.display()))
}

/// Copies a folder dropped in the deploy folder into `to` like [`copy_tree`], without following
/// the folder's own name (whoever drops folders there can drop links too).
pub fn copy_dropped_folder(path: &Path, to: &Path) -> Result<(), BuildError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(BuildError::Source(format!(
            "{} is not a folder",
            path.display()
        )));
    };
    spinforge_unpack::copy_entry(parent, name, to, SKIPPED).map_err(refusing(path.display()))
}

/// Refuses a git checkout holding a symlink that resolves outside it (git can commit
/// `leak -> /etc/shadow`), or anything but files, folders and links.
pub fn check_checkout(dir: &Path, shown_url: &str) -> Result<(), BuildError> {
    spinforge_unpack::check_links(dir, "the checkout").map_err(refusing(shown_url))
}

/// The builder's error for a tree (`what`) that `spinforge_unpack` refused or failed to write.
fn refusing(what: impl std::fmt::Display) -> impl FnOnce(spinforge_unpack::Error) -> BuildError {
    move |e| match e {
        spinforge_unpack::Error::Refused(why) => {
            BuildError::Source(format!("refusing {what}: {why}"))
        }
        spinforge_unpack::Error::Io { what, source } => BuildError::Io { what, source },
    }
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

/// Unpacks a `.tar.gz` into `into` (created, or an empty folder) with [`spinforge_unpack`],
/// refusing anything unsafe; a single top-level folder holding everything is unwrapped. The
/// builder, the deploy folder and the admin API's upload check all unpack through here.
pub fn extract_tarball(archive: &Path, into: &Path, max_bytes: u64) -> Result<(), BuildError> {
    let limits = spinforge_unpack::Limits::new(max_bytes);
    spinforge_unpack::unpack_tar_gz(archive, into, &limits).map_err(refusing(archive.display()))
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
