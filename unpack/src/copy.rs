//! Folders copied into new trees: a source folder or deploy-folder app into a release
//! ([`copy_tree`]), a build cache between releases ([`copy_tree_beneath`]), `node_modules` to and
//! from the install cache as hard links ([`link_tree`]). Both sides are walked through
//! descriptors without following a symlink: a link is copied as a link, never read through.

use crate::error::Error;
use crate::links::{Link, check_resolved, not_a_file};
use crate::owner::make_owned_folders;
use crate::root::{Root, create_file, make_folder, open_folder, open_regular, read_link, stat};
use crate::walk::{MAX_DEPTH, names};
use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Gid, Uid};
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

/// How files are carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Files {
    Copy,
    /// Hard links (a copy where the file system cannot link).
    HardLink,
}

/// How a tree is mirrored.
#[derive(Debug, Clone, Copy)]
struct How<'a> {
    /// Names left out at any depth.
    skip: &'a [&'a str],
    files: Files,
    /// Owner given to every entry created (through its descriptor), if any.
    owner: Option<(Uid, Gid)>,
}

/// Copies the folder `from` (its path is followed as given: it comes from the config) into the
/// new folder `to`, leaving out entries named in `skip` at any depth. A symlink is copied as a
/// link, and only when it resolves inside `to`; a device, FIFO or socket is refused. On error
/// `to` is removed.
pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<(), Error> {
    let src = Dir::open_ambient_dir(from, cap_std::ambient_authority())
        .map_err(Error::io(format!("opening {}", from.display())))?;
    let dst = Root::create(to).map_err(Error::io(format!("creating {}", to.display())))?;
    let how = How {
        skip,
        files: Files::Copy,
        owner: None,
    };
    let result = copy_checked(&src, dst.dir(), how);
    if result.is_err() {
        drop(dst);
        let _ = std::fs::remove_dir_all(to);
    }
    result
}

/// [`copy_tree`] of the folder `name` in `parent`, where only `parent`'s path is trusted (the
/// deploy folder: anyone who may drop a folder there may also drop a link): `name` is opened
/// without following a link.
pub fn copy_entry(parent: &Path, name: &OsStr, to: &Path, skip: &[&str]) -> Result<(), Error> {
    let shown = parent.join(name);
    let top = Dir::open_ambient_dir(parent, cap_std::ambient_authority())
        .map_err(Error::io(format!("opening {}", parent.display())))?;
    let src = open_folder(&top, name).map_err(Error::io(format!("opening {}", shown.display())))?;
    let dst = Root::create(to).map_err(Error::io(format!("creating {}", to.display())))?;
    let how = How {
        skip,
        files: Files::Copy,
        owner: None,
    };
    let result = copy_checked(&src, dst.dir(), how);
    if result.is_err() {
        drop(dst);
        let _ = std::fs::remove_dir_all(to);
    }
    result
}

/// [`copy_tree`] from `anchor/from` to `anchor/to` (both relative), where only `anchor`'s path
/// is trusted: both are reached from it one name at a time without following a link (e.g. the
/// build cache of a previous release, in folders the app's own code could change). `to` must
/// not exist yet; its missing parents are created. Each entry created is given to `owner` (uid,
/// gid) when set. On error `to` is removed.
pub fn copy_tree_beneath(
    anchor: &Path,
    from: &Path,
    to: &Path,
    skip: &[&str],
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    let top = Root::open(anchor).map_err(Error::io(format!("opening {}", anchor.display())))?;
    let src = top
        .folder(from, false)
        .map_err(Error::io(format!("opening {}", from.display())))?;
    let (Some(name), Some(parents)) = (to.file_name(), to.parent()) else {
        return Err(Error::Refused(format!(
            "`{}` names no folder",
            to.display()
        )));
    };
    // Folders created on the way are the owner's too (the build writes next to its cache).
    let parent = make_owned_folders(top.dir(), parents, owner)
        .map_err(Error::io(format!("creating {}", to.display())))?;
    rustix::fs::mkdirat(&parent, name, rustix::fs::Mode::from_raw_mode(0o755))
        .map_err(|e| Error::io(format!("creating {}", to.display()))(e.into()))?;
    let how = How {
        skip,
        files: Files::Copy,
        owner: owner.map(|(u, g)| (Uid::from_raw(u), Gid::from_raw(g))),
    };
    let result = open_folder(&parent, name)
        .map_err(Error::io(format!("opening {}", to.display())))
        .and_then(|dst| {
            give(&dst, None, how.owner)
                .map_err(Error::io(format!("handing over {}", to.display())))?;
            copy_checked(&src, &dst, how)
        });
    if result.is_err() {
        // Through the handle: a path could lead elsewhere by now.
        let _ = parent.remove_dir_all(name);
    }
    result
}

fn copy_checked(src: &Dir, dst: &Dir, how: How<'_>) -> Result<(), Error> {
    let mut links = Vec::new();
    mirror(src, dst, Path::new(""), 0, how, &mut links)?;
    check_resolved(dst, &links, "the source folder")
}

/// Copies the folder `from` into the new folder `to` with hard links for files: fast, and no
/// folder is shared, so files added or removed in one copy never show in the other. `from`'s
/// last name is not followed. Symlinks are copied as they are, unchecked: this moves a tree the
/// app's own install produced (e.g. npm workspaces link `node_modules/x` to `../packages/x`)
/// between the app's folders, and nothing reads through them here.
pub fn link_tree(from: &Path, to: &Path) -> Result<(), Error> {
    let src = Root::open(from).map_err(Error::io(format!("opening {}", from.display())))?;
    let dst = Root::create(to).map_err(Error::io(format!("creating {}", to.display())))?;
    let how = How {
        skip: &[],
        files: Files::HardLink,
        owner: None,
    };
    mirror(src.dir(), dst.dir(), Path::new(""), 0, how, &mut Vec::new())
}

fn mirror(
    src: &Dir,
    dst: &Dir,
    rel: &Path,
    depth: usize,
    how: How<'_>,
    links: &mut Vec<Link>,
) -> Result<(), Error> {
    if depth >= MAX_DEPTH {
        return Err(Error::Refused(format!(
            "`{}` is nested more than {MAX_DEPTH} folders deep",
            rel.display()
        )));
    }
    for name in names(src, rel)? {
        if how.skip.iter().any(|s| name == *s) {
            continue;
        }
        let rel = rel.join(&name);
        let at = |what: &str| Error::io(format!("{what} {}", rel.display()));
        let Some(st) = stat(src, &name).map_err(at("reading"))? else {
            continue; // gone since it was listed
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                make_folder(dst, &name).map_err(at("creating"))?;
                let from = open_folder(src, &name).map_err(at("opening"))?;
                let to = open_folder(dst, &name).map_err(at("opening"))?;
                give(&to, None, how.owner).map_err(at("handing over"))?;
                mirror(&from, &to, &rel, depth + 1, how, links)?;
            }
            FileType::RegularFile => {
                let linked = how.files == Files::HardLink
                    && rustix::fs::linkat(src, &name, dst, &name, AtFlags::empty()).is_ok();
                if !linked {
                    let file = copy_file(src, dst, &name).map_err(at("copying"))?;
                    give(&file, None, how.owner).map_err(at("handing over"))?;
                }
            }
            FileType::Symlink => {
                let target = read_link(src, &name).map_err(at("reading link"))?;
                rustix::fs::symlinkat(&target, dst, &name)
                    .map_err(|e| at("creating link")(e.into()))?;
                give(dst, Some(&name), how.owner).map_err(at("handing over"))?;
                links.push(Link {
                    shown: rel.display().to_string(),
                    rel,
                    target,
                });
            }
            _ => return Err(not_a_file(&rel)),
        }
    }
    Ok(())
}

/// Copies the regular file `name` from `src` to a new file in `dst` with its permission bits;
/// returns the new file.
fn copy_file(src: &Dir, dst: &Dir, name: &OsStr) -> io::Result<std::fs::File> {
    let (mut from, st) = open_regular(src, name)?;
    let mut to = create_file(dst, name, st.st_mode & 0o777)?;
    io::copy(&mut from, &mut to)?;
    Ok(to)
}

/// Gives `fd` (or the symlink `name` in the folder `fd`, not followed) to `owner`, if any.
fn give(fd: impl AsFd, name: Option<&OsStr>, owner: Option<(Uid, Gid)>) -> io::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    match name {
        None => rustix::fs::fchown(fd, Some(uid), Some(gid))?,
        Some(n) => rustix::fs::chownat(fd, n, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    struct Case {
        dir: tempfile::TempDir,
    }

    impl Case {
        fn new() -> Case {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("secret"), "s3cret").expect("write");
            std::fs::create_dir_all(dir.path().join("src/lib/node_modules/x")).expect("mkdir");
            std::fs::create_dir_all(dir.path().join("src/.git")).expect("mkdir");
            std::fs::write(dir.path().join("src/index.js"), "1").expect("write");
            std::fs::write(dir.path().join("src/lib/a.js"), "2").expect("write");
            std::fs::write(dir.path().join("src/.git/HEAD"), "x").expect("write");
            Case { dir }
        }
        fn src(&self) -> std::path::PathBuf {
            self.dir.path().join("src")
        }
        fn out(&self) -> std::path::PathBuf {
            self.dir.path().join("out")
        }
    }

    #[test]
    fn copies_files_modes_and_inside_links_and_skips_names() {
        use std::os::unix::fs::PermissionsExt;
        let c = Case::new();
        std::fs::set_permissions(
            c.src().join("index.js"),
            std::fs::Permissions::from_mode(0o750),
        )
        .expect("chmod");
        symlink("../index.js", c.src().join("lib/entry.js")).expect("ln");
        copy_tree(&c.src(), &c.out(), &["node_modules", ".git"]).expect("copy");
        assert_eq!(
            std::fs::read_to_string(c.out().join("lib/entry.js")).expect("read"),
            "1"
        );
        assert!(
            std::fs::symlink_metadata(c.out().join("lib/entry.js"))
                .expect("stat")
                .is_symlink()
        );
        let mode = std::fs::metadata(c.out().join("index.js"))
            .expect("stat")
            .mode();
        assert_eq!(mode & 0o700, 0o700);
        assert!(!c.out().join("lib/node_modules").exists());
        assert!(!c.out().join(".git").exists());
    }

    #[test]
    fn a_link_out_of_the_folder_is_refused_and_never_read_through() {
        let c = Case::new();
        symlink(c.dir.path().join("secret"), c.src().join("leak.txt")).expect("ln");
        symlink("../../secret", c.src().join("lib/rel.txt")).expect("ln");
        symlink(c.dir.path(), c.src().join("outdir")).expect("ln");
        let err = copy_tree(&c.src(), &c.out(), &[])
            .expect_err("refused")
            .to_string();
        assert!(err.contains("points outside the source folder"), "{err}");
        assert!(!c.out().exists(), "a refused copy leaves nothing");
    }

    #[test]
    fn an_entry_is_copied_without_following_its_own_name() {
        let c = Case::new();
        copy_entry(c.dir.path(), OsStr::new("src"), &c.out(), &[]).expect("copy");
        assert!(c.out().join("lib/a.js").is_file());
        symlink(c.src(), c.dir.path().join("alias")).expect("ln");
        let out2 = c.dir.path().join("out2");
        assert!(copy_entry(c.dir.path(), OsStr::new("alias"), &out2, &[]).is_err());
        assert!(!out2.exists());
    }

    #[test]
    fn fifos_are_refused() {
        let c = Case::new();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            c.src().join("pipe"),
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        let err = copy_tree(&c.src(), &c.out(), &[])
            .expect_err("refused")
            .to_string();
        assert!(err.contains("FIFO"), "{err}");
    }

    #[test]
    fn beneath_an_anchor_no_link_is_followed_on_the_way() {
        let c = Case::new();
        let anchor = c.dir.path().join("app");
        std::fs::create_dir_all(anchor.join("releases/1/.next/cache")).expect("mkdir");
        std::fs::write(anchor.join("releases/1/.next/cache/c.bin"), "cached").expect("write");
        std::fs::create_dir_all(anchor.join("releases/2")).expect("mkdir");
        copy_tree_beneath(
            &anchor,
            Path::new("releases/1/.next/cache"),
            Path::new("releases/2/.next/cache"),
            &[],
            None,
        )
        .expect("copy");
        assert_eq!(
            std::fs::read_to_string(anchor.join("releases/2/.next/cache/c.bin")).expect("read"),
            "cached"
        );
        // The app turned `.next` into a link to a folder it may not read: not followed.
        std::fs::create_dir_all(anchor.join("releases/3")).expect("mkdir");
        symlink(c.src(), anchor.join("releases/3/.next")).expect("ln");
        std::fs::create_dir_all(anchor.join("releases/4")).expect("mkdir");
        assert!(
            copy_tree_beneath(
                &anchor,
                Path::new("releases/3/.next"),
                Path::new("releases/4/.next"),
                &[],
                None
            )
            .is_err()
        );
        symlink(c.dir.path(), anchor.join("releases/4/.next")).expect("ln");
        assert!(
            copy_tree_beneath(
                &anchor,
                Path::new("releases/1/.next/cache"),
                Path::new("releases/4/.next/cache"),
                &[],
                None
            )
            .is_err()
        );
        assert!(!c.dir.path().join("cache").exists());
    }

    #[test]
    fn beneath_an_anchor_what_is_created_is_the_owners() {
        let probe = tempfile::tempfile().expect("tempfile");
        if probe.metadata().expect("stat").uid() != 0 {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        const APP: u32 = 1_900_123_457;
        let c = Case::new();
        let anchor = c.dir.path().join("app");
        std::fs::create_dir_all(anchor.join("releases/1/.next/cache/sub")).expect("mkdir");
        std::fs::write(anchor.join("releases/1/.next/cache/sub/c.bin"), "c").expect("write");
        symlink("c.bin", anchor.join("releases/1/.next/cache/sub/l")).expect("ln");
        std::fs::create_dir_all(anchor.join("releases/2")).expect("mkdir");
        copy_tree_beneath(
            &anchor,
            Path::new("releases/1/.next/cache"),
            Path::new("releases/2/.next/cache"),
            &[],
            Some((APP, APP)),
        )
        .expect("copy");
        for rel in [
            ".next",
            ".next/cache",
            ".next/cache/sub",
            ".next/cache/sub/c.bin",
        ] {
            let m = std::fs::metadata(anchor.join("releases/2").join(rel)).expect("stat");
            assert_eq!((m.uid(), m.gid()), (APP, APP), "{rel}");
        }
        let l = std::fs::symlink_metadata(anchor.join("releases/2/.next/cache/sub/l")).expect("ln");
        assert_eq!(l.uid(), APP);
        assert_eq!(
            std::fs::metadata(anchor.join("releases/2"))
                .expect("stat")
                .uid(),
            0
        );
    }

    #[test]
    fn link_tree_links_files_and_keeps_links_verbatim() {
        let c = Case::new();
        symlink("../packages/x", c.src().join("lib/ws")).expect("ln");
        link_tree(&c.src(), &c.out()).expect("link");
        let a = std::fs::metadata(c.out().join("lib/a.js")).expect("stat");
        assert_eq!(
            a.ino(),
            std::fs::metadata(c.src().join("lib/a.js"))
                .expect("stat")
                .ino()
        );
        assert_eq!(
            std::fs::read_link(c.out().join("lib/ws")).expect("link"),
            Path::new("../packages/x")
        );
        // The source's own name is not followed.
        symlink(c.src(), c.dir.path().join("alias")).expect("ln");
        assert!(link_tree(&c.dir.path().join("alias"), &c.dir.path().join("out2")).is_err());
    }
}
