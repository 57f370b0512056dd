//! Untrusted trees — uploaded or dropped `.tar.gz` archives, source folders, git checkouts —
//! written beneath a directory handle whose containment the kernel enforces.
//!
//! The boundary, by construction:
//! - Every write is relative to a directory descriptor, one plain name at a time, never
//!   following a symlink ([`root`]): an entry cannot land outside the tree, and nothing is written
//!   through a link an earlier entry placed. Files are created with `O_EXCL`: an existing inode
//!   is never opened for writing (a name that is taken is unlinked first, never a folder).
//! - Hard links only to regular files already written inside the tree, found through the same
//!   handle; no copy fallback.
//! - Symlinks are kept only when they resolve inside the tree where they actually are, following
//!   every other link on the way: checked once the tree is whole, by resolving each one with
//!   `openat2(RESOLVE_BENEATH)` (cap-std), so the kernel says whether it escapes ([`links`]).
//! - Devices, FIFOs and sockets are refused.
//! - Archives are bounded in entries, unpacked bytes (counted from headers, before any data is
//!   read) and in what the decompressor produces (counted while reading: header data per entry
//!   and the compression ratio; [`meter`]), and checked whole before anything is written.
//! - Ownership is changed through descriptors, never through a link and never on a file with
//!   other hard links ([`owner`]).

mod copy;
mod error;
mod links;
mod meter;
mod names;
mod owner;
mod plan;
mod root;
mod tarball;
mod walk;

pub use copy::{copy_entry, copy_tree, copy_tree_beneath, link_tree};
pub use error::Error;
pub use links::check_links;
pub use owner::{chown_tree, create_owned_dirs, hand_over};
pub use root::read_small;
pub use tarball::{Limits, MAX_ENTRIES, unpack_tar_gz};
