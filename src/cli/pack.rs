//! Packs a source folder into a `.tar.gz` for upload: honours `.gitignore` files, and skips
//! `node_modules` and `.git` (the builder installs dependencies itself).

use super::gitignore::{self, Pattern};
use anyhow::{Context, Result};
use std::path::Path;

/// Always left out.
const SKIPPED: &[&str] = &["node_modules", ".git"];

/// Writes `dir` as a gzipped tar to `out`; returns the number of files packed.
pub fn pack(dir: &Path, out: &std::fs::File) -> Result<u64> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut patterns = gitignore::load(dir, "");
    let mut files = 0;
    walk(dir, "", &mut patterns, &mut tar, &mut files)?;
    tar.into_inner()
        .context("writing the archive")?
        .finish()
        .context("writing the archive")?;
    Ok(files)
}

fn walk<W: std::io::Write>(
    root: &Path,
    rel: &str,
    patterns: &mut Vec<Pattern>,
    tar: &mut tar::Builder<W>,
    files: &mut u64,
) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            anyhow::bail!("{}: file names must be UTF-8", entry.path().display());
        };
        if SKIPPED.contains(&name) {
            continue;
        }
        let path_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        if gitignore::ignored(patterns, &path_rel, ft.is_dir()) {
            continue;
        }
        if ft.is_dir() {
            let before = patterns.len();
            patterns.extend(gitignore::load(&entry.path(), &path_rel));
            tar.append_dir(&path_rel, entry.path())
                .with_context(|| format!("packing {}", entry.path().display()))?;
            walk(root, &path_rel, patterns, tar, files)?;
            patterns.truncate(before);
        } else if ft.is_file() || ft.is_symlink() {
            tar.append_path_with_name(entry.path(), &path_rel)
                .with_context(|| format!("packing {}", entry.path().display()))?;
            *files += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn honours_gitignore_and_skips_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(".gitignore"), "*.log\ndist/\n").unwrap();
        std::fs::write(d.join("package.json"), "{}").unwrap();
        std::fs::write(d.join("debug.log"), "x").unwrap();
        for sub in ["dist", "node_modules/x", ".git", "src"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("dist/a.js"), "x").unwrap();
        std::fs::write(d.join("node_modules/x/i.js"), "x").unwrap();
        std::fs::write(d.join(".git/HEAD"), "x").unwrap();
        std::fs::write(d.join("src/.gitignore"), "secret.txt\n").unwrap();
        std::fs::write(d.join("src/secret.txt"), "x").unwrap();
        std::fs::write(d.join("src/index.js"), "x").unwrap();
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
}
