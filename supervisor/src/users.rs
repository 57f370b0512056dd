//! One uid/gid per app, so that apps cannot read each other's files or `/proc/<pid>/environ`.
//!
//! With `supervisor.run_as` set and SpinForge running as root, every app's builds and spinlets
//! run as their own id from [`FIRST`]..[`FIRST`]+[`COUNT`] (no passwd entry needed, like
//! systemd's `DynamicUser`), and its folders are that id's alone (0700). The id is chosen once —
//! a hash of the app's name, the next free slot on a collision or on an id the passwd database
//! uses — and kept in `data_dir/app-users.json`, since the app's files on disk carry it.

use crate::build::runner::RunAs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// First id of the range: above systemd's container ranges (524288–1879048191) and below its
/// "foreign" range (2147352576+), so no ordinary, system, dynamic or container user has it.
pub const FIRST: u32 = 1_900_000_000;
/// Ids in the range.
pub const COUNT: u32 = 65_536;
const FILE: &str = "app-users.json";

static TABLE: Mutex<Option<(PathBuf, BTreeMap<String, u32>)>> = Mutex::new(None);

/// The identity app `app` runs as: its own id when `run_as` is set (the supervisor is root),
/// else `None` (everything runs as the supervisor's user).
pub fn for_app(
    data_dir: &Path,
    app: &str,
    run_as: Option<RunAs>,
) -> std::io::Result<Option<RunAs>> {
    if run_as.is_none() {
        return Ok(None);
    }
    let mut guard = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let path = data_dir.join(FILE);
    if guard.as_ref().is_none_or(|(p, _)| *p != path) {
        let table = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        *guard = Some((path.clone(), table));
    }
    let Some((_, table)) = guard.as_mut() else {
        return Ok(None);
    };
    if let Some(&id) = table.get(app) {
        return Ok(Some(RunAs { uid: id, gid: id }));
    }
    let id = pick(app, |id| table.values().any(|&v| v == id) || system_has(id))
        .ok_or_else(|| std::io::Error::other("no free app user id left"))?;
    table.insert(app.to_string(), id);
    let json = serde_json::to_vec_pretty(&*table).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, &path)?;
    tracing::info!(app, uid = id, "app gets its own user id");
    Ok(Some(RunAs { uid: id, gid: id }))
}

/// The app's slot by hash, then the next one not `taken`.
fn pick(app: &str, taken: impl Fn(u32) -> bool) -> Option<u32> {
    let hash = blake3::hash(app.as_bytes());
    let bytes = hash.as_bytes();
    let start = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % COUNT;
    (0..COUNT)
        .map(|i| FIRST + (start + i) % COUNT)
        .find(|&id| !taken(id))
}

fn system_has(id: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    matches!(User::from_uid(Uid::from_raw(id)), Ok(Some(_)))
        || matches!(Group::from_gid(Gid::from_raw(id)), Ok(Some(_)))
}

/// Makes `path` the app's alone: owner `user`, mode `mode` (0700 folders, 0600 files). Through a
/// descriptor opened without following a link: `home` and the like sit in the app's own folder,
/// where its code could have put a link to a system file in their place.
pub fn hand_over(path: &Path, user: Option<RunAs>, mode: u32) -> std::io::Result<()> {
    spinforge_unpack::hand_over(path, user.map(|u| (u.uid, u.gid)), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_in_range() {
        let a = pick("shop", |_| false).expect("id");
        assert_eq!(pick("shop", |_| false), Some(a), "deterministic");
        assert!((FIRST..FIRST + COUNT).contains(&a));
        // A taken slot moves on to the next free one.
        let b = pick("shop", |id| id == a).expect("id");
        assert_ne!(a, b);
        assert!((FIRST..FIRST + COUNT).contains(&b));
        assert_eq!(pick("x", |_| true), None);
    }

    #[test]
    fn the_table_is_kept_on_disk() {
        let tmp = tempfile::tempdir().expect("tmp");
        let me = Some(RunAs { uid: 1, gid: 1 });
        assert_eq!(for_app(tmp.path(), "a", None).expect("ok"), None);
        let a = for_app(tmp.path(), "a", me).expect("ok").expect("id");
        let b = for_app(tmp.path(), "b", me).expect("ok").expect("id");
        assert_ne!(a.uid, b.uid);
        assert_eq!(a.uid, a.gid);
        let text = std::fs::read_to_string(tmp.path().join(FILE)).expect("file");
        assert!(text.contains(&a.uid.to_string()), "{text}");
        assert_eq!(for_app(tmp.path(), "a", me).expect("ok"), Some(a));
    }
}
