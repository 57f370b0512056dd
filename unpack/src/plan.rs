//! What an archive has put where so far, by name: lets the first pass refuse an archive before
//! anything is written (an entry beneath a link or a file, a folder replaced, a hard link to
//! anything but a file seen earlier). The second pass writes through the handle, where the kernel
//! enforces the same; this only makes the refusal early and its message clear.
//!
//! A tree of names, so that adding an entry costs its name's length, and the number of names
//! it holds is bounded.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Component, Path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Is {
    Folder,
    File,
    Link,
}

#[derive(Debug)]
struct Node {
    is: Is,
    children: HashMap<OsString, Node>,
}

impl Node {
    fn new(is: Is) -> Node {
        Node {
            is,
            children: HashMap::new(),
        }
    }
}

/// An entry's kind, as far as the plan cares.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind<'a> {
    Folder,
    File,
    Symlink,
    /// A hard link to this earlier entry (relative to the root).
    HardLink(&'a Path),
}

#[derive(Debug)]
pub(crate) struct Plan {
    root: Node,
    nodes: u64,
    max_nodes: u64,
}

impl Plan {
    /// A plan that holds at most `max_nodes` names (entries and the folders they imply).
    pub(crate) fn new(max_nodes: u64) -> Plan {
        Plan {
            root: Node::new(Is::Folder),
            nodes: 0,
            max_nodes,
        }
    }

    /// Records `rel` (plain names, not empty), or says why it cannot be written.
    pub(crate) fn add(&mut self, rel: &Path, kind: Kind<'_>) -> Result<(), String> {
        let is = match kind {
            Kind::Folder => Is::Folder,
            Kind::File => Is::File,
            Kind::Symlink => Is::Link,
            Kind::HardLink(target) => {
                if self.find(target).map(|n| n.is) != Some(Is::File) {
                    return Err(format!(
                        "it is a hard link to `{}`, which is not a file earlier in the archive",
                        target.display()
                    ));
                }
                Is::File
            }
        };
        let names = plain_names(rel)?;
        let Some((last, folders)) = names.split_last() else {
            return Err("it has no name".into());
        };
        let (max, mut added) = (self.max_nodes, 0u64);
        let mut node = &mut self.root;
        let mut walked = std::path::PathBuf::new();
        for name in folders {
            walked.push(name);
            let child = node.children.entry(name.clone()).or_insert_with(|| {
                added += 1;
                Node::new(Is::Folder)
            });
            match child.is {
                Is::Link => {
                    return Err(format!(
                        "it lies beneath the link `{}`, and nothing is written through links",
                        walked.display()
                    ));
                }
                Is::File => return Err(format!("it lies beneath the file `{}`", walked.display())),
                Is::Folder => node = child,
            }
        }
        match node.children.get_mut(last) {
            None => {
                added += 1;
                node.children.insert(last.clone(), Node::new(is));
            }
            Some(existing) => match (existing.is, is) {
                (Is::Folder, Is::Folder) => {}
                (Is::Folder, _) => return Err("it would replace a folder".into()),
                (_, Is::Folder) => return Err("it would turn a file or link into a folder".into()),
                // A file or link replaced: unlinked when written, never written through.
                _ => existing.is = is,
            },
        }
        self.nodes += added;
        if self.nodes > max {
            return Err(format!(
                "the archive names more than {max} files and folders"
            ));
        }
        Ok(())
    }

    fn find(&self, rel: &Path) -> Option<&Node> {
        let mut node = &self.root;
        for name in plain_names(rel).ok()? {
            node = node.children.get(&name)?;
        }
        Some(node)
    }
}

fn plain_names(rel: &Path) -> Result<Vec<OsString>, String> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n.to_os_string()),
            _ => Err(format!("`{}` is not a plain relative name", rel.display())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn nothing_goes_beneath_a_link_or_a_file() {
        let mut plan = Plan::new(100);
        plan.add(p("d1/d2"), Kind::Folder).expect("folder");
        plan.add(p("d1/d2/up"), Kind::Symlink).expect("link");
        let err = plan
            .add(p("d1/d2/up/out"), Kind::Symlink)
            .expect_err("beneath");
        assert!(err.contains("beneath the link `d1/d2/up`"), "{err}");
        plan.add(p("f"), Kind::File).expect("file");
        assert!(plan.add(p("f/x"), Kind::File).is_err());
    }

    #[test]
    fn hard_links_name_earlier_files_only() {
        let mut plan = Plan::new(100);
        plan.add(p("payload.txt"), Kind::File).expect("file");
        plan.add(p("link"), Kind::Symlink).expect("link");
        plan.add(p("a/b"), Kind::Folder).expect("folder");
        plan.add(p("h1"), Kind::HardLink(p("payload.txt")))
            .expect("ok");
        plan.add(p("h2"), Kind::HardLink(p("h1")))
            .expect("a hard link is a file");
        for target in ["missing.txt", "link", "a/b", "a"] {
            let err = plan
                .add(p("h3"), Kind::HardLink(p(target)))
                .expect_err(target);
            assert!(err.contains("not a file earlier"), "{err}");
        }
    }

    #[test]
    fn folders_are_never_replaced() {
        let mut plan = Plan::new(100);
        plan.add(p("a/b"), Kind::File).expect("file");
        assert!(plan.add(p("a"), Kind::Symlink).is_err(), "implicit folder");
        plan.add(p("a"), Kind::Folder)
            .expect("a folder again is fine");
        assert!(plan.add(p("a/b"), Kind::Folder).is_err());
        plan.add(p("a/b"), Kind::File)
            .expect("a file replaced by unlinking");
    }

    #[test]
    fn the_names_it_holds_are_bounded() {
        let mut plan = Plan::new(5);
        plan.add(p("a/b/c/d"), Kind::File).expect("4 names");
        let err = plan.add(p("x/y"), Kind::File).expect_err("6 names");
        assert!(err.contains("more than 5"), "{err}");
    }
}
