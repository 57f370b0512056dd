//! Packs a source folder into a `.tar.gz` for upload: honours `.gitignore` files (every folder's,
//! as git reads them, through the `ignore` crate: globs compiled to automata, so no pattern
//! makes matching slow), and skips `node_modules` and `.git` (the builder installs dependencies
//! itself).

use anyhow::{Context, Result, bail};
use std::path::Path;

/// Always left out.
const SKIPPED: &[&str] = &["node_modules", ".git"];

/// Writes `dir` as a gzipped tar to `out`; returns the number of files packed.
pub fn pack(dir: &Path, out: &std::fs::File) -> Result<u64> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let walk = ignore::WalkBuilder::new(dir)
        // Only `.gitignore` files inside the folder: no hidden-file rule, no `.ignore`, no
        // global or parent excludes — what is packed does not depend on the machine.
        .standard_filters(false)
        .git_ignore(true)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| e.depth() == 0 || !SKIPPED.iter().any(|s| e.file_name() == *s))
        .build();
    let mut files = 0;
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.io_error().is_some() => {
                return Err(e).with_context(|| format!("reading {}", dir.display()));
            }
            // A .gitignore line that is not a valid pattern: git skips it too.
            Err(e) => {
                eprintln!("warning: {e}");
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let rel = path
            .strip_prefix(dir)
            .context("a walked path outside the folder")?;
        if rel.to_str().is_none() {
            bail!("{}: file names must be UTF-8", path.display());
        }
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_dir() {
            tar.append_dir(rel, path)
                .with_context(|| format!("packing {}", path.display()))?;
        } else if ft.is_file() || ft.is_symlink() {
            tar.append_path_with_name(path, rel)
                .with_context(|| format!("packing {}", path.display()))?;
            files += 1;
        }
    }
    tar.into_inner()
        .context("writing the archive")?
        .finish()
        .context("writing the archive")?;
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn packed_names(d: &Path) -> (Vec<String>, u64) {
        let out = tempfile::tempfile().unwrap();
        let n = pack(d, &out).unwrap();
        use std::io::Seek;
        let mut out = out;
        out.rewind().unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(out));
        let mut names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        (names, n)
    }

    fn touch(d: &Path, files: &[&str]) {
        for f in files {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
    }

    #[test]
    fn honours_gitignore_and_skips_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(".gitignore"), "*.log\ndist/\n").unwrap();
        touch(
            d,
            &[
                "package.json",
                "debug.log",
                "dist/a.js",
                "node_modules/x/i.js",
                ".git/HEAD",
                "src/secret.txt",
                "src/index.js",
            ],
        );
        std::fs::write(d.join("src/.gitignore"), "secret.txt\n").unwrap();
        let (names, n) = packed_names(d);
        assert_eq!(
            names,
            [
                ".gitignore",
                "package.json",
                "src",
                "src/.gitignore",
                "src/index.js"
            ]
        );
        assert_eq!(n, 4);
    }

    #[test]
    fn gitignore_patterns_as_git_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join(".gitignore"),
            "# comment\n*.log\n!keep.log\n/build\na/**/z\nfile[0-9].txt\n.env*\nout/\n",
        )
        .unwrap();
        touch(
            d,
            &[
                "x.log",
                "keep.log",
                "build/o.js",
                "src/build/k.js",
                "a/b/c/z",
                "a/z",
                "file3.txt",
                "fileX.txt",
                ".env.local",
                "sub/out/o.js",
            ],
        );
        // `out/` names folders only: a file called `out` stays.
        touch(d, &["src/out"]);
        let (names, _) = packed_names(d);
        assert_eq!(
            names,
            [
                ".gitignore",
                "a",
                "a/b",
                "a/b/c",
                "fileX.txt",
                "keep.log",
                "src",
                "src/build",
                "src/build/k.js",
                "src/out",
                "sub",
            ]
        );
    }

    /// The hand-written matcher this replaced backtracked once per way of placing each `*`:
    /// this pattern against this name took it longer than the age of the universe.
    #[test]
    fn no_pattern_makes_packing_slow() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(d.join(".gitignore"), format!("{}b\n", "*a".repeat(16))).unwrap();
        touch(&d, &[&format!("{}c", "a".repeat(60)), "index.js"]);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(packed_names(&d));
        });
        let (names, _) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("packing one folder with a pathological .gitignore took over 20 s");
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
