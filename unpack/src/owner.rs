//! Ownership handed to an app's user, without following links: every change is made through a
//! descriptor of the entry itself (`fchown`, or `fchownat(fd, "", AT_EMPTY_PATH)` on an
//! `O_PATH|O_NOFOLLOW` descriptor), reached one name at a time from the tree's top.

use crate::error::Error;
use crate::root::{Root, make_folder, open_folder, stat};
use crate::walk::walk;
use cap_std::fs::Dir;
use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, OFlags, Uid};
use std::io;
use std::path::Path;

/// Hands `top` and everything beneath it to `uid:gid`. Symlinks themselves are changed, never
/// what they point to. A non-folder with more than one hard link is left as it is: one of its
/// other names may be a file outside the tree (root can link any file), and handing that to the
/// app would give it the outside file; files the app installed itself are its own already.
pub fn chown_tree(top: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let root = Root::open(top).map_err(Error::io(format!("opening {}", top.display())))?;
    rustix::fs::fchown(root.dir(), uid, gid)
        .map_err(Error::errno(format!("handing over {}", top.display())))?;
    walk(root.dir(), &[], &mut |v| {
        let what = || format!("handing over {}", v.rel.display());
        if let Some(folder) = v.folder {
            return rustix::fs::fchown(folder, uid, gid).map_err(Error::errno(what()));
        }
        // Opened as it is (O_PATH, no follow), so the link count read is that of the inode
        // changed next, whatever happens to the name meanwhile.
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(v.parent, v.name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(()), // gone since it was listed
            Err(e) => return Err(Error::errno(what())(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(Error::errno(what()))?;
        if st.st_nlink > 1 {
            return Ok(());
        }
        rustix::fs::chownat(&fd, "", uid, gid, AtFlags::EMPTY_PATH).map_err(Error::errno(what()))
    })
}

/// Makes `path` — a folder or a regular file, not a link — owned by `owner` (uid, gid; `None`:
/// unchanged) with permission bits `mode`, through a descriptor opened without following a link.
pub fn hand_over(path: &Path, owner: Option<(u32, u32)>, mode: u32) -> io::Result<()> {
    // O_NONBLOCK: a FIFO put in its place must not hang us; it is refused below.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(CWD, path, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory | FileType::RegularFile => {}
        other => {
            return Err(io::Error::other(format!(
                "{} is a {other:?}, not a folder or file",
                path.display()
            )));
        }
    }
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// Creates the folders of `rel` missing beneath `anchor` (one name at a time, following no
/// link) and hands each one created to `owner`.
pub fn create_owned_dirs(anchor: &Path, rel: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let top = Root::open(anchor)?;
    make_owned_folders(top.dir(), rel, owner).map(drop)
}

/// [`create_owned_dirs`] beneath the open folder `top`; returns the last folder, opened.
pub(crate) fn make_owned_folders(
    top: &Dir,
    rel: &Path,
    owner: Option<(u32, u32)>,
) -> io::Result<Dir> {
    let mut dir = top.try_clone()?;
    for c in rel.components() {
        let std::path::Component::Normal(name) = c else {
            return Err(io::Error::other(format!(
                "`{}` is not a plain name",
                rel.display()
            )));
        };
        let existed = stat(&dir, name)?.is_some();
        make_folder(&dir, name)?;
        dir = open_folder(&dir, name)?;
        if let (false, Some((uid, gid))) = (existed, owner) {
            rustix::fs::fchown(&dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn is_root() -> bool {
        let probe = tempfile::tempfile().expect("tempfile");
        probe.metadata().expect("stat").uid() == 0
    }

    /// A uid nobody uses.
    const APP: u32 = 1_900_123_456;

    #[test]
    fn chown_tree_reaches_neither_through_links_nor_hard_links() {
        if !is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        let secret = d.path().join("secret");
        std::fs::write(&secret, "s").expect("write");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
        std::fs::write(tree.join("sub/own.js"), "x").expect("write");
        symlink(&secret, tree.join("sub/soft")).expect("ln");
        std::fs::hard_link(&secret, tree.join("sub/hard")).expect("link");
        symlink(d.path(), tree.join("outdir")).expect("ln");
        chown_tree(&tree, APP, APP).expect("chown");
        for p in [tree.clone(), tree.join("sub"), tree.join("sub/own.js")] {
            assert_eq!(
                std::fs::metadata(&p).expect("stat").uid(),
                APP,
                "{}",
                p.display()
            );
        }
        assert_eq!(
            std::fs::symlink_metadata(tree.join("sub/soft"))
                .expect("stat")
                .uid(),
            APP
        );
        let outside = std::fs::metadata(&secret).expect("stat");
        assert_eq!(
            (outside.uid(), outside.gid()),
            (0, 0),
            "the outside file stays root's"
        );
        assert_eq!(std::fs::metadata(d.path()).expect("stat").uid(), 0);
        // The top itself is not followed either.
        let alias = d.path().join("alias");
        symlink(d.path(), &alias).expect("ln");
        assert!(chown_tree(&alias, APP, APP).is_err());
        assert_eq!(std::fs::metadata(d.path()).expect("stat").uid(), 0);
    }

    #[test]
    fn hand_over_refuses_links() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let secret = d.path().join("secret");
        std::fs::write(&secret, "s").expect("write");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        symlink(&secret, d.path().join("home")).expect("ln");
        assert!(hand_over(&d.path().join("home"), None, 0o700).is_err());
        let mode = std::fs::metadata(&secret).expect("stat").mode();
        assert_eq!(mode & 0o777, 0o640, "the link's target keeps its mode");
        std::fs::create_dir(d.path().join("real")).expect("mkdir");
        hand_over(&d.path().join("real"), None, 0o700).expect("a folder");
        let mode = std::fs::metadata(d.path().join("real"))
            .expect("stat")
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn owned_dirs_are_created_beneath_without_following() {
        let d = tempfile::tempdir().expect("tempdir");
        let anchor = d.path().join("app");
        std::fs::create_dir(&anchor).expect("mkdir");
        create_owned_dirs(&anchor, Path::new("cache/npm"), None).expect("create");
        assert!(anchor.join("cache/npm").is_dir());
        symlink(d.path(), anchor.join("home")).expect("ln");
        assert!(create_owned_dirs(&anchor, Path::new("home/x"), None).is_err());
        assert!(!d.path().join("x").exists());
    }
}
