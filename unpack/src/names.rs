//! Names read lexically: what an entry's name or a link's text says, before the file system is
//! asked. These checks refuse early and explain; containment itself is the kernel's job.

use std::path::{Component, Path, PathBuf};

/// `path` as plain names that stay inside the root (`a/./b` → `a/b`, `a/../b` → `b`); `None`
/// for absolute paths or ones that climb above the root.
pub(crate) fn relative(path: &Path) -> Option<PathBuf> {
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

/// Whether a symlink at `link` (relative to the root) saying `target` stays inside the root
/// when read as text, ignoring other links on the way.
pub(crate) fn stays_inside(link: &Path, target: &Path) -> bool {
    !target.has_root() && relative(&link.parent().unwrap_or(Path::new("")).join(target)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(relative(Path::new("a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new("a/../b")), Some(PathBuf::from("b")));
        assert_eq!(relative(Path::new("./")), Some(PathBuf::new()));
        assert_eq!(relative(Path::new("../x")), None);
        assert_eq!(relative(Path::new("a/../../x")), None);
        assert_eq!(relative(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn link_text_is_read_from_where_the_link_is() {
        assert!(stays_inside(Path::new("a/b/link"), Path::new("../c")));
        assert!(stays_inside(Path::new("a/link"), Path::new("..")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("../..")));
        assert!(!stays_inside(Path::new("link"), Path::new("/etc")));
        assert!(!stays_inside(Path::new("link"), Path::new("x/../../y")));
    }
}
