//! `.tar.gz` archives, in two passes. The first reads every entry and refuses the archive before
//! anything is written: names outside the root, entries beneath links, hard links to anything
//! but an earlier file, links whose text leaves the root, devices and FIFOs, and the limits. The
//! second writes through the [`Root`] handle, applying the same checks again (the file may have
//! changed in between); once the tree is whole, every symlink is resolved by the kernel beneath
//! the root ([`links`](crate::links)). A refused archive leaves nothing behind.

use crate::error::Error;
use crate::links::{Link, check_resolved};
use crate::meter::{Compressed, MAX_RATIO, Meter, Trip, Unpacked};
use crate::names;
use crate::plan::{Kind, Plan};
use crate::root::{Root, clear_name, create_file, make_folder, stat};
use rustix::fs::{AtFlags, FileType};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Entries an archive may hold at most.
pub const MAX_ENTRIES: u64 = 200_000;
/// Decompressed bytes one entry may spend beyond its data: its header, long name, long link
/// name and pax records. Far above any real name (PATH_MAX is 4 KiB).
const HEADER_ALLOWANCE: u64 = 64 << 10;
/// Bytes of names and link targets an archive may hold in all (they are kept in memory).
const MAX_NAME_BYTES: u64 = 32 << 20;
/// Name components one entry may have.
const MAX_DEPTH: usize = 256;

/// What an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of entry data in all, as the headers declare them (checked before reading it).
    pub max_bytes: u64,
    /// Entries in all.
    pub max_entries: u64,
}

impl Limits {
    /// At most `max_bytes` unpacked and [`MAX_ENTRIES`] entries.
    pub fn new(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            max_entries: MAX_ENTRIES,
        }
    }
}

/// Unpacks the `.tar.gz` at `archive` into `into` (created; it may exist as an empty folder).
/// A single top-level folder holding everything is unwrapped. An archive refused in the second
/// pass or by the link check has `into` removed; the first pass writes nothing.
pub fn unpack_tar_gz(archive: &Path, into: &Path, limits: &Limits) -> Result<(), Error> {
    let mut survey = Survey::new(limits);
    read_entries(archive, limits, &mut |item, _| survey.add(item))?;
    let strip = survey.top_folder();
    survey.check_links(strip.as_deref())?;

    let root = Root::create(into).map_err(Error::io(format!("creating {}", into.display())))?;
    let result = write_entries(archive, limits, &root, strip.as_deref())
        .and_then(|links| check_resolved(root.dir(), &links, "the archive's root"));
    if result.is_err() {
        drop(root);
        let _ = std::fs::remove_dir_all(into);
    }
    result
}

/// An entry, checked and classified.
#[derive(Debug)]
struct Item {
    /// Its name as the archive has it, for messages.
    shown: String,
    /// Its name as plain names relative to the root (not empty).
    rel: PathBuf,
    kind: ItemKind,
}

#[derive(Debug)]
enum ItemKind {
    Folder,
    File {
        mode: u32,
    },
    Symlink(PathBuf),
    /// To this entry (plain names from the archive's root).
    HardLink(PathBuf),
}

impl Item {
    fn plan_kind<'a>(&self, hard_link_target: Option<&'a Path>) -> Kind<'a> {
        match (&self.kind, hard_link_target) {
            (ItemKind::Folder, _) => Kind::Folder,
            (ItemKind::File { .. }, _) => Kind::File,
            (ItemKind::Symlink(_), _) => Kind::Symlink,
            (ItemKind::HardLink(_), t) => Kind::HardLink(t.unwrap_or(Path::new(""))),
        }
    }

    fn refuse(&self, why: impl std::fmt::Display) -> Error {
        Error::Refused(format!("entry `{}`: {why}", self.shown))
    }
}

/// What the first pass learns: the plan, the top-level names, the symlinks.
struct Survey {
    plan: Plan,
    tops: BTreeSet<OsString>,
    top_is_folder: bool,
    links: Vec<Link>,
}

impl Survey {
    fn new(limits: &Limits) -> Survey {
        Survey {
            plan: Plan::new(limits.max_entries.saturating_mul(2)),
            tops: BTreeSet::new(),
            top_is_folder: true,
            links: Vec::new(),
        }
    }

    fn add(&mut self, item: Item) -> Result<(), Error> {
        let target = match &item.kind {
            ItemKind::HardLink(t) => Some(t.as_path()),
            _ => None,
        };
        self.plan
            .add(&item.rel, item.plan_kind(target))
            .map_err(|why| item.refuse(why))?;
        let mut names = item.rel.components();
        if let Some(first) = names.next() {
            self.tops.insert(first.as_os_str().to_owned());
            if names.next().is_none() && !matches!(item.kind, ItemKind::Folder) {
                self.top_is_folder = false;
            }
        }
        if let ItemKind::Symlink(target) = item.kind {
            self.links.push(Link {
                rel: item.rel,
                target,
                shown: item.shown,
            });
        }
        Ok(())
    }

    /// `app/package.json`, `app/src/…`: the folder `app` to unwrap.
    fn top_folder(&self) -> Option<PathBuf> {
        match (self.tops.len(), self.top_is_folder) {
            (1, true) => self.tops.first().map(PathBuf::from),
            _ => None,
        }
    }

    /// Each link's text, read from where it will be written, stays inside.
    fn check_links(&self, strip: Option<&Path>) -> Result<(), Error> {
        for link in &self.links {
            if !names::stays_inside(&stripped(&link.rel, strip), &link.target) {
                return Err(link_outside(&link.shown, &link.target));
            }
        }
        Ok(())
    }
}

fn link_outside(shown: &str, target: &Path) -> Error {
    Error::Refused(format!(
        "link `{shown}` points outside the archive's root (to `{}`)",
        target.display()
    ))
}

fn stripped(rel: &Path, strip: Option<&Path>) -> PathBuf {
    match strip.map(|top| rel.strip_prefix(top)) {
        Some(Ok(r)) => r.to_path_buf(),
        _ => rel.to_path_buf(),
    }
}

/// The second pass: writes every entry beneath `root`; returns the symlinks written.
fn write_entries(
    archive: &Path,
    limits: &Limits,
    root: &Root,
    strip: Option<&Path>,
) -> Result<Vec<Link>, Error> {
    let mut plan = Plan::new(limits.max_entries.saturating_mul(2));
    let mut links = Vec::new();
    read_entries(archive, limits, &mut |item, data| {
        let rel = stripped(&item.rel, strip);
        if rel.as_os_str().is_empty() {
            return Ok(()); // the unwrapped top folder itself
        }
        let target = match &item.kind {
            ItemKind::HardLink(t) => Some(stripped(t, strip)),
            _ => None,
        };
        plan.add(&rel, item.plan_kind(target.as_deref()))
            .map_err(|why| item.refuse(why))?;
        let cannot = |e: io::Error| Error::Refused(format!("cannot unpack `{}` ({e})", item.shown));
        match &item.kind {
            ItemKind::Folder => {
                let (dir, name) = root.parent(&rel, true).map_err(cannot)?;
                make_folder(&dir, name).map_err(cannot)?;
            }
            ItemKind::File { mode } => {
                let (dir, name) = root.parent(&rel, true).map_err(cannot)?;
                clear_name(&dir, name).map_err(cannot)?;
                let mut file = create_file(&dir, name, *mode).map_err(cannot)?;
                io::copy(data, &mut file).map_err(cannot)?;
            }
            ItemKind::Symlink(to) => {
                if !names::stays_inside(&rel, to) {
                    return Err(link_outside(&item.shown, to));
                }
                let (dir, name) = root.parent(&rel, true).map_err(cannot)?;
                clear_name(&dir, name).map_err(cannot)?;
                rustix::fs::symlinkat(to, &dir, name).map_err(|e| cannot(e.into()))?;
                links.push(Link {
                    rel: rel.clone(),
                    target: to.clone(),
                    shown: item.shown.clone(),
                });
            }
            ItemKind::HardLink(_) => {
                let target = target.as_deref().unwrap_or(Path::new(""));
                hard_link(root, target, &rel).map_err(|e| match e {
                    Some(e) => cannot(e),
                    None => item.refuse(format!(
                        "it is a hard link to `{}`, which is not a file in the tree",
                        target.display()
                    )),
                })?;
            }
        }
        Ok(())
    })?;
    Ok(links)
}

/// Links `rel` to the regular file `target`, both found through the handle without following
/// links; `Err(None)` when `target` is not a regular file.
fn hard_link(root: &Root, target: &Path, rel: &Path) -> Result<(), Option<io::Error>> {
    let (from_dir, from_name) = root.parent(target, false).map_err(Some)?;
    match stat(&from_dir, from_name).map_err(Some)? {
        Some(s) if FileType::from_raw_mode(s.st_mode) == FileType::RegularFile => {}
        _ => return Err(None),
    }
    let (dir, name) = root.parent(rel, true).map_err(Some)?;
    clear_name(&dir, name).map_err(Some)?;
    // No AT_SYMLINK_FOLLOW: the name is linked as it is, and it was just seen to be a file.
    rustix::fs::linkat(&from_dir, from_name, &dir, name, AtFlags::empty())
        .map_err(|e| Some(e.into()))
}

/// Reads every entry of the archive, checks it against the limits and the naming rules, and
/// hands it to `visit` with its data.
fn read_entries(
    archive: &Path,
    limits: &Limits,
    visit: &mut dyn FnMut(Item, &mut dyn Read) -> Result<(), Error>,
) -> Result<(), Error> {
    let file = std::fs::File::open(archive)
        .map_err(Error::io(format!("opening {}", archive.display())))?;
    let meter = Meter::new(HEADER_ALLOWANCE);
    let gz = flate2::read::GzDecoder::new(Compressed {
        inner: file,
        meter: meter.clone(),
    });
    let mut ar = tar::Archive::new(Unpacked {
        inner: gz,
        meter: meter.clone(),
    });
    let unreadable = |e: io::Error| match meter.tripped() {
        Some(trip) => tripped(trip),
        None => Error::Refused(format!("unreadable archive ({e})")),
    };
    let (mut count, mut total, mut name_bytes) = (0u64, 0u64, 0u64);
    for entry in ar.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        count += 1;
        if count > limits.max_entries {
            return Err(Error::Refused(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let size = entry.size();
        // The next header may start once this entry's data (padded to 512) is read.
        meter.allow_until(
            entry
                .raw_file_position()
                .saturating_add(size.saturating_add(511) & !511)
                .saturating_add(HEADER_ALLOWANCE),
        );
        total = total.saturating_add(size);
        if total > limits.max_bytes {
            return Err(Error::Refused(format!(
                "it unpacks to more than {} (supervisor.builds.max_archive_size)",
                bytes(limits.max_bytes)
            )));
        }
        let path = entry
            .path()
            .map_err(|e| Error::Refused(format!("an entry with an unreadable name ({e})")))?
            .into_owned();
        let shown = path.display().to_string();
        name_bytes += path.as_os_str().len() as u64;
        let rel = names::relative(&path).ok_or_else(|| {
            Error::Refused(format!("entry `{shown}` points outside the archive's root"))
        })?;
        if rel.components().count() > MAX_DEPTH {
            return Err(Error::Refused(format!(
                "entry `{shown}` is nested more than {MAX_DEPTH} folders deep"
            )));
        }
        use tar::EntryType as T;
        let link_target = |entry: &tar::Entry<'_, _>| -> Result<PathBuf, Error> {
            Ok(entry
                .link_name()
                .map_err(|e| {
                    Error::Refused(format!("link `{shown}` has an unreadable target ({e})"))
                })?
                .ok_or_else(|| Error::Refused(format!("link `{shown}` has no target")))?
                .into_owned())
        };
        let kind = match entry.header().entry_type() {
            T::Regular | T::Continuous => ItemKind::File {
                mode: entry.header().mode().unwrap_or(0o644),
            },
            T::Directory => ItemKind::Folder,
            T::Symlink => {
                let target = link_target(&entry)?;
                name_bytes += target.as_os_str().len() as u64;
                // Read from the entry's own place; checked again once the top folder is
                // unwrapped, and resolved by the kernel once the tree is whole.
                if !names::stays_inside(&rel, &target) {
                    return Err(link_outside(&shown, &target));
                }
                ItemKind::Symlink(target)
            }
            T::Link => {
                let target = link_target(&entry)?;
                name_bytes += target.as_os_str().len() as u64;
                let rel_target = names::relative(&target)
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| {
                        Error::Refused(format!(
                            "hard link `{shown}` points outside the archive's root (to `{}`)",
                            target.display()
                        ))
                    })?;
                ItemKind::HardLink(rel_target)
            }
            T::Char | T::Block | T::Fifo => {
                return Err(Error::Refused(format!(
                    "entry `{shown}` is a device or FIFO; an app's source holds files, folders and links"
                )));
            }
            T::GNUSparse => {
                return Err(Error::Refused(format!(
                    "entry `{shown}` is a sparse file; archive it as a plain file"
                )));
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => {
                return Err(Error::Refused(format!(
                    "entry `{shown}` has an unsupported type ({other:?})"
                )));
            }
        };
        if name_bytes > MAX_NAME_BYTES {
            return Err(Error::Refused(format!(
                "its names unpack to more than {}",
                bytes(MAX_NAME_BYTES)
            )));
        }
        if rel.as_os_str().is_empty() {
            match kind {
                ItemKind::Folder => continue, // `./`, the root itself (`tar -C dir .`)
                _ => return Err(Error::Refused(format!("entry `{shown}` has no name"))),
            }
        }
        let item = Item { shown, rel, kind };
        if let Err(e) = visit(item, &mut entry) {
            // Data read while writing may have hit the meter: say so rather than "cannot write".
            return Err(meter.tripped().map(tripped).unwrap_or(e));
        }
    }
    Ok(())
}

fn tripped(trip: Trip) -> Error {
    Error::Refused(match trip {
        Trip::Budget => format!(
            "it unpacks to more than {} of headers for one entry (a decompression bomb?)",
            bytes(HEADER_ALLOWANCE)
        ),
        Trip::Ratio => format!(
            "it unpacks to more than {MAX_RATIO} times its compressed size (a decompression bomb?)"
        ),
    })
}

/// `n` bytes for people: whole MiB or KiB when exact.
fn bytes(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests;
