//! The symlink rule: a symlink is kept only when it resolves inside its tree from where it
//! actually is, following every link on the way. Checked once the tree is whole (a link may name
//! entries written after it), by letting the kernel resolve it beneath the tree's descriptor
//! (cap-std: `openat2` with `RESOLVE_BENEATH`, which fails on `..` above the root and on absolute
//! links anywhere on the way).

use crate::error::Error;
use crate::names;
use crate::root::{Root, read_link};
use crate::walk::walk;
use cap_std::fs::Dir;
use rustix::fs::FileType;
use std::io;
use std::path::{Path, PathBuf};

/// A symlink in a tree: where it is (relative to the root), what it says, and the name to show.
#[derive(Debug)]
pub(crate) struct Link {
    pub rel: PathBuf,
    pub target: PathBuf,
    pub shown: String,
}

/// Refuses the first of `links` that resolves outside `root` (`tree` names the root in the
/// message). A link whose target does not exist (yet) is kept only when its text, read from
/// where it is, stays inside.
pub(crate) fn check_resolved(root: &Dir, links: &[Link], tree: &str) -> Result<(), Error> {
    for link in links {
        let outside = || {
            Error::Refused(format!(
                "link `{}` points outside {tree} (to `{}`)",
                link.shown,
                link.target.display()
            ))
        };
        match root.metadata(&link.rel) {
            Ok(_) => {}
            Err(e) if dangling(&e) => {
                if !names::stays_inside(&link.rel, &link.target) {
                    return Err(outside());
                }
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(Error::Refused(format!(
                    "link `{}` is part of a loop (to `{}`)",
                    link.shown,
                    link.target.display()
                )));
            }
            // cap-std's "a path led outside of the filesystem" (EXDEV from openat2, or its own
            // resolver where openat2 is missing).
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(outside()),
            Err(e) => return Err(Error::io(format!("resolving link `{}`", link.shown))(e)),
        }
    }
    Ok(())
}

fn dangling(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
}

/// Checks an existing tree (a git checkout): every symlink resolves inside `top`, and nothing is
/// a device, FIFO or socket. `tree` names it in messages ("the checkout").
pub fn check_links(top: &Path, tree: &str) -> Result<(), Error> {
    let root = Root::open(top).map_err(Error::io(format!("opening {}", top.display())))?;
    let mut links = Vec::new();
    walk(root.dir(), &[], &mut |v| {
        match v.file_type() {
            FileType::Directory | FileType::RegularFile => {}
            FileType::Symlink => {
                let target = read_link(v.parent, v.name)
                    .map_err(Error::io(format!("reading link {}", v.rel.display())))?;
                links.push(Link {
                    rel: v.rel.to_path_buf(),
                    target,
                    shown: v.rel.display().to_string(),
                });
            }
            _ => return Err(not_a_file(v.rel)),
        }
        Ok(())
    })?;
    check_resolved(root.dir(), &links, tree)
}

/// The refusal of a device, FIFO or socket.
pub(crate) fn not_a_file(rel: &Path) -> Error {
    Error::Refused(format!(
        "`{}` is a device, FIFO or socket; an app's source holds files, folders and links",
        rel.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(links: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("t/a/b")).expect("mkdir");
        std::fs::write(d.path().join("t/a/b/file"), "x").expect("write");
        std::fs::write(d.path().join("secret"), "s").expect("write");
        for (at, to) in links {
            let at = d.path().join("t").join(at);
            std::fs::create_dir_all(at.parent().expect("parent")).expect("mkdir");
            symlink(to, at).expect("symlink");
        }
        d
    }

    fn check(links: &[(&str, &str)]) -> Result<(), Error> {
        let d = tree(links);
        check_links(&d.path().join("t"), "the checkout")
    }

    #[test]
    fn links_that_stay_inside_are_kept() {
        check(&[
            ("a/up", ".."),
            ("a/b/f", "file"),
            ("top", "a/b/../b/file"),
            ("via", "a/up/a/b/file"),
            ("dangling", "not/yet/there"),
        ])
        .expect("inside");
    }

    #[test]
    fn links_that_leave_are_refused_even_through_other_links() {
        for case in [
            vec![("leak", "/etc/passwd")],
            vec![("leak", "../secret")],
            vec![("a/b/up", "../.."), ("leak", "a/b/up/../secret")],
            // Each link alone reads as inside; together they leave: a/b/up is the root, and
            // `..` from there is outside.
            vec![("a/b/up", "../.."), ("a/leak", "b/up/..")],
            vec![("gone", "missing/../../secret")],
        ] {
            let err = check(&case).expect_err("refused").to_string();
            assert!(
                err.contains("points outside the checkout"),
                "{case:?}: {err}"
            );
        }
    }

    #[test]
    fn loops_and_fifos_are_refused() {
        let err = check(&[("x", "y"), ("y", "x")])
            .expect_err("loop")
            .to_string();
        assert!(err.contains("loop"), "{err}");
        let d = tree(&[]);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("t/pipe"),
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        let err = check_links(&d.path().join("t"), "the checkout")
            .expect_err("fifo")
            .to_string();
        assert!(err.contains("FIFO"), "{err}");
    }
}
