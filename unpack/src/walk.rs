//! Walks an existing tree through descriptors: each folder is opened by name relative to its
//! parent's descriptor with `O_NOFOLLOW`, so a symlink is reported, never entered.

use crate::error::Error;
use crate::root::{open_folder, stat};
use cap_std::fs::Dir;
use rustix::fs::{FileType, Stat};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Deepest folder nesting walked (each level holds a descriptor open).
pub(crate) const MAX_DEPTH: usize = 256;

/// One entry met on the walk.
#[derive(Debug)]
pub(crate) struct Visit<'a> {
    /// The folder holding the entry.
    pub parent: &'a Dir,
    pub name: &'a OsStr,
    /// Its path relative to the top of the walk.
    pub rel: &'a Path,
    /// `lstat` of the entry.
    pub stat: &'a Stat,
    /// The entry opened, when it is a folder (walked next).
    pub folder: Option<&'a Dir>,
}

impl Visit<'_> {
    pub(crate) fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }
}

/// Calls `visit` for every entry below `top` (not `top` itself), parents before children;
/// entries named in `skip` are left out with everything below them.
pub(crate) fn walk(
    top: &Dir,
    skip: &[&str],
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    walk_in(top, Path::new(""), 0, skip, visit)
}

fn walk_in(
    dir: &Dir,
    rel: &Path,
    depth: usize,
    skip: &[&str],
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    if depth >= MAX_DEPTH {
        return Err(Error::Refused(format!(
            "`{}` is nested more than {MAX_DEPTH} folders deep",
            rel.display()
        )));
    }
    for name in names(dir, rel)? {
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let rel: PathBuf = rel.join(&name);
        let Some(st) = stat(dir, &name).map_err(Error::io(format!("reading {}", rel.display())))?
        else {
            continue; // gone since it was listed
        };
        let folder = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            Some(open_folder(dir, &name).map_err(Error::io(format!("opening {}", rel.display())))?)
        } else {
            None
        };
        visit(&Visit {
            parent: dir,
            name: &name,
            rel: &rel,
            stat: &st,
            folder: folder.as_ref(),
        })?;
        if let Some(sub) = &folder {
            walk_in(sub, &rel, depth + 1, skip, visit)?;
        }
    }
    Ok(())
}

/// The names in `dir`, sorted (so walks and errors are reproducible).
pub(crate) fn names(dir: &Dir, rel: &Path) -> Result<Vec<OsString>, Error> {
    let shown = || format!("listing {}", rel.display());
    let mut out = Vec::new();
    for entry in dir.entries().map_err(Error::io(shown()))? {
        out.push(entry.map_err(Error::io(shown()))?.file_name());
    }
    out.sort();
    Ok(out)
}
