//! The directory handle a tree is written beneath. Every operation takes a directory descriptor
//! and one plain name, and never follows a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `linkat`
//! without `AT_SYMLINK_FOLLOW`): the kernel resolves nothing but that name in that directory, so
//! nothing lands outside the tree and nothing is written through a link, whatever the tree holds.

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Stat};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Folders are created `rwxr-xr-x` (before the umask).
pub(crate) const FOLDER_MODE: u32 = 0o755;

/// An open tree: its top folder's descriptor.
#[derive(Debug)]
pub(crate) struct Root {
    dir: Dir,
}

impl Root {
    /// Creates `path` (it may exist as an empty folder; its parents are created) and opens it.
    pub(crate) fn create(path: &Path) -> io::Result<Root> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if std::fs::read_dir(path)?.next().is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is not empty", path.display()),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        Root::open(path)
    }

    /// Opens the existing folder `path`; a symlink as its last name is not followed.
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::openat(CWD, path, dir_flags(), Mode::empty())?;
        Ok(Root { dir: Dir::from(fd) })
    }

    pub(crate) fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The existing folder `rel` beneath the root (created with its parents when `create`),
    /// reached one name at a time without following a link.
    pub(crate) fn folder(&self, rel: &Path, create: bool) -> io::Result<Dir> {
        if rel.as_os_str().is_empty() {
            return self.dir.try_clone();
        }
        let (parent, name) = self.parent(rel, create)?;
        if create {
            make_folder(&parent, name)?;
        }
        open_folder(&parent, name)
    }

    /// The folder holding `rel` (plain names, relative to the root) and its last name. Missing
    /// folders on the way are created when `create`; a symlink or file on the way is an error.
    pub(crate) fn parent<'p>(&self, rel: &'p Path, create: bool) -> io::Result<(Dir, &'p OsStr)> {
        let mut names = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => names.push(n),
                _ => {
                    return Err(io::Error::other(format!(
                        "`{}` is not a plain name",
                        rel.display()
                    )));
                }
            }
        }
        let Some((last, folders)) = names.split_last() else {
            return Err(io::Error::other("an empty name"));
        };
        let mut dir = self.dir.try_clone()?;
        for name in folders {
            if create {
                make_folder(&dir, name)?;
            }
            dir = open_folder(&dir, name)?;
        }
        Ok((dir, last))
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens the folder `name` in `dir`; a symlink there is an error (`ELOOP`/`ENOTDIR`), not
/// followed.
pub(crate) fn open_folder(dir: &Dir, name: &OsStr) -> io::Result<Dir> {
    let fd = rustix::fs::openat(dir, name, dir_flags(), Mode::empty())?;
    Ok(Dir::from(fd))
}

/// Creates the folder `name` in `dir` unless a folder has that name (anything else is an error).
pub(crate) fn make_folder(dir: &Dir, name: &OsStr) -> io::Result<()> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(FOLDER_MODE)) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => match stat(dir, name)? {
            Some(s) if FileType::from_raw_mode(s.st_mode) == FileType::Directory => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("`{}` exists and is not a folder", name.to_string_lossy()),
            )),
        },
        Err(e) => Err(e.into()),
    }
}

/// `lstat` of `name` in `dir`; `None` if there is no such entry.
pub(crate) fn stat(dir: &Dir, name: &OsStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Frees `name` in `dir` for a new entry: a file or link there is unlinked (its inode is never
/// written to), a folder is an error.
pub(crate) fn clear_name(dir: &Dir, name: &OsStr) -> io::Result<()> {
    match stat(dir, name)? {
        None => Ok(()),
        Some(s) if FileType::from_raw_mode(s.st_mode) == FileType::Directory => {
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a folder has that name already",
            ))
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// Creates the new file `name` in `dir` for writing; fails if anything has that name.
pub(crate) fn create_file(dir: &Dir, name: &OsStr, mode: u32) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode & 0o777))?;
    Ok(File::from(fd))
}

/// Opens the regular file `name` in `dir` for reading, without following a symlink and without
/// blocking on a FIFO swapped in; anything but a regular file is an error.
pub(crate) fn open_regular(dir: &Dir, name: &OsStr) -> io::Result<(File, Stat)> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((File::from(fd), st))
}

/// The text of the symlink `name` in `dir`.
pub(crate) fn read_link(dir: &Dir, name: &OsStr) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let text = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(
        text.into_bytes(),
    )))
}

/// Reads at most `limit` bytes of the text file `name` in the folder `dir`, following no symlink
/// (neither `name` nor `dir`'s last name).
pub fn read_small(dir: &Path, name: &str, limit: u64) -> io::Result<String> {
    let root = Root::open(dir)?;
    let (file, _) = open_regular(root.dir(), OsStr::new(name))?;
    let mut s = String::new();
    file.take(limit).read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_never_reached_through_a_symlink() {
        let d = tempfile::tempdir().expect("tempdir");
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        let root_path = d.path().join("root");
        let root = Root::create(&root_path).expect("root");
        std::os::unix::fs::symlink(&outside, root_path.join("out")).expect("symlink");
        std::os::unix::fs::symlink("real", root_path.join("inner")).expect("symlink");
        std::fs::create_dir(root_path.join("real")).expect("mkdir");
        for rel in ["out/x", "inner/x"] {
            let err = root.parent(Path::new(rel), false).expect_err(rel);
            let refused = [rustix::io::Errno::LOOP, rustix::io::Errno::NOTDIR]
                .map(|e| Some(e.raw_os_error()));
            assert!(refused.contains(&err.raw_os_error()), "{rel}: {err}");
            let err = root.parent(Path::new(rel), true).expect_err(rel);
            assert!(err.to_string().contains("is not a folder"), "{rel}: {err}");
        }
        assert!(root.parent(Path::new("real/x"), false).is_ok());
        assert!(root.parent(Path::new("../x"), true).is_err());
        assert_eq!(std::fs::read_dir(&outside).expect("ls").count(), 0);
    }

    #[test]
    fn files_are_created_new_and_names_cleared_by_unlinking() {
        let d = tempfile::tempdir().expect("tempdir");
        let outside = d.path().join("secret");
        std::fs::write(&outside, "keep").expect("write");
        let root_path = d.path().join("root");
        let root = Root::create(&root_path).expect("root");
        std::os::unix::fs::symlink(&outside, root_path.join("link")).expect("symlink");
        std::fs::hard_link(&outside, root_path.join("hard")).expect("link");
        for name in ["link", "hard"] {
            assert!(create_file(root.dir(), OsStr::new(name), 0o644).is_err());
            clear_name(root.dir(), OsStr::new(name)).expect("clear");
            std::io::Write::write_all(
                &mut create_file(root.dir(), OsStr::new(name), 0o644).expect("create"),
                b"new",
            )
            .expect("write");
        }
        assert_eq!(std::fs::read_to_string(&outside).expect("read"), "keep");
        std::fs::create_dir(root_path.join("folder")).expect("mkdir");
        assert!(clear_name(root.dir(), OsStr::new("folder")).is_err());
    }

    #[test]
    fn read_small_does_not_follow_links() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("secret"), "s3cret").expect("write");
        std::fs::create_dir(d.path().join("app")).expect("mkdir");
        std::fs::write(d.path().join("app/ok.yaml"), "fine").expect("write");
        std::os::unix::fs::symlink("../secret", d.path().join("app/leak.yaml")).expect("ln");
        std::os::unix::fs::symlink("app", d.path().join("alias")).expect("ln");
        assert_eq!(
            read_small(&d.path().join("app"), "ok.yaml", 10).expect("read"),
            "fine"
        );
        assert!(read_small(&d.path().join("app"), "leak.yaml", 10).is_err());
        assert!(read_small(&d.path().join("alias"), "ok.yaml", 10).is_err());
    }
}
